"""HTML pages of what the policy did: one per GRPO step, one per OFSD round, and an index.

`WORKDIR/trajectories/step_000012.html` (GRPO step 12), `ofsd_round_000.html` (OFSD round 0) and
`index.html` linking them. A page is self-contained (inline CSS, no script, nothing fetched) and
every text in it is escaped, so a `<search>` the policy wrote reads as text. Pure functions:
groups (`train.rollouts.Group`) and arrays in, a string out; `trajectory_log.py` calls them
during a run.

A trajectory is split into turns by its loss mask: each run of sampled tokens (mask 1) is what
the policy wrote in one turn; each run of context tokens (mask 0) is an observation block (its
passages read by `protocol.parse_observation`) or the corrective message
(`protocol.INVALID_ACTION_MESSAGE`). The query of a turn is the agent's record
(`Trajectory.queries`, one per observation), never a re-parse of the text.
"""
from __future__ import annotations

import dataclasses
import html
import re
from typing import Sequence

import numpy as np

from searche1_jax.rl.ofsd import render_context
from searche1_jax.rollout import protocol as P
from searche1_jax.train.distill import sibling_record
from searche1_jax.train.paths import atomic_write_text, workdir_path

PAGES_DIR = "trajectories"
PASSAGE_CHARS = 600     # characters of a retrieved passage shown (folded): pages stay small
CONTEXT_CHARS = 2000    # characters of any other context block shown

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em;color:#222;max-width:110em}
h1{font-size:1.4em}h2{font-size:1.15em;margin:.3em 0}h3{font-size:1em;margin:.2em 0}
section.group,section.pair{border:1px solid #ccc;border-radius:6px;padding:.8em;margin:1em 0}
.trajs{display:grid;grid-template-columns:repeat(auto-fill,minmax(26em,1fr));gap:.8em}
.side{display:grid;grid-template-columns:1fr 1fr;gap:.8em}
article.traj{border:1px solid #ddd;border-radius:4px;padding:.5em;background:#fcfcfc;min-width:0}
article.correct{border-left:5px solid #2a9d3a}article.wrong{border-left:5px solid #c0392b}
.stats{color:#555;font-size:.92em}.stats b{color:#222}
pre{white-space:pre-wrap;word-break:break-word;margin:.2em 0;font:13px/1.35 ui-monospace,monospace}
pre.policy{background:#eef4ff;padding:.3em}pre.context{background:#f3f3f3;padding:.3em}
.query{margin:.2em 0}.query q{background:#fff4cc}
.corrective{background:#fdecea;padding:.2em .4em;font-size:.92em}
ol.turns{padding-left:1.6em;margin:.3em 0}ol.turns>li{margin:.3em 0}
details{margin:.1em 0 .1em .8em}summary{cursor:pointer}
.passage{font-size:.9em;color:#444;white-space:pre-wrap;margin:.2em 0 .2em 1em}
.answer{margin:.3em 0}.gold{color:#2a7a3a;font-weight:600}
.kl{white-space:pre-wrap;font:13px/1.6 ui-monospace,monospace;border:1px solid #eee;padding:.3em}
.kl span{border-right:1px solid #fff}.kl i.gap{color:#999;padding:0 .4em}
.note{color:#777;font-size:.9em}
"""


# ---------------------------------------------------------------- a trajectory as turns

@dataclasses.dataclass
class Turn:
    """One turn: what the policy wrote, then the context the agent appended after it."""
    policy: str = ""
    query: str | None = None                     # the search the agent ran for this turn
    passages: list[tuple[str, str]] | None = None  # (title, text) of the observation, in rank order
    corrective: bool = False                     # the agent answered with the corrective message
    other: list[str] = dataclasses.field(default_factory=list)  # context that is neither


def _runs(traj) -> list[tuple[int, list[int]]]:
    """(mask, token ids) of each maximal run of equal loss mask in the response."""
    out: list[tuple[int, list[int]]] = []
    for tid, m in zip(traj.response_ids, traj.loss_mask):
        if out and out[-1][0] == int(m):
            out[-1][1].append(int(tid))
        else:
            out.append((int(m), [int(tid)]))
    return out


def split_turns(traj, tokenizer) -> list[Turn]:
    """The turns of a trajectory (see the module docstring). A context run may hold several
    blocks (a turn that sampled nothing leaves two blocks adjacent): it is cut at each corrective
    message. An observation with no query left (impossible unless the record was edited) shows
    without one; a query whose observation was cut away by the length budget goes to the last turn."""
    turns: list[Turn] = []
    for mask, ids in _runs(traj):
        text = tokenizer.decode(ids)
        if mask:
            turns.append(Turn(policy=text))
            continue
        if not turns:
            turns.append(Turn())
        for piece in re.split(f"({re.escape(P.INVALID_ACTION_MESSAGE)})", text):
            if piece == P.INVALID_ACTION_MESSAGE:
                turns[-1].corrective = True
            elif (docs := P.parse_observation(piece)) is not None:
                if turns[-1].passages is not None:  # a second block after an empty turn
                    turns.append(Turn())
                turns[-1].passages = docs
            elif piece.strip():
                turns[-1].other.append(piece)
    queries = list(traj.queries)
    for t in turns:
        if t.passages is not None and queries:
            t.query = queries.pop(0)
    if queries and turns:
        turns[-1].query = queries[0]
    return turns


# ---------------------------------------------------------------- HTML pieces

def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _cap(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n] + f" … [{len(text) - n} more characters]"


def _num(x: float) -> str:
    return f"{float(x):.6g}"


def _page(title: str, body: str, *, index_link: bool = True) -> str:
    nav = '<p class="note"><a href="index.html">all trajectory pages</a></p>\n' if index_link else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n{nav}{body}</body></html>\n")


def _turn_html(turn: Turn) -> str:
    parts = [f'<pre class="policy">{_e(turn.policy) if turn.policy else "(nothing sampled)"}</pre>']
    if turn.query is not None:
        parts.append(f'<p class="query">query: <q>{_e(turn.query)}</q></p>')
    if turn.passages is not None:
        docs = "".join(f'<details class="doc"><summary>{i}. <span class="title">{_e(title)}</span></summary>'
                       f'<p class="passage">{_e(_cap(text, PASSAGE_CHARS))}</p></details>'
                       for i, (title, text) in enumerate(turn.passages, 1))
        parts.append(f'<div class="obs">retrieved:{docs or " (nothing)"}</div>')
    if turn.corrective:
        parts.append(f'<p class="corrective">corrective message: {_e(P.INVALID_ACTION_MESSAGE.strip())}</p>')
    parts += [f'<pre class="context">{_e(_cap(o, CONTEXT_CHARS))}</pre>' for o in turn.other]
    return "<li>" + "".join(parts) + "</li>"


def _trajectory_html(traj, tokenizer, *, label: str, reward: float, advantage: float | None = None,
                     css: str = "", extra: str = "") -> str:
    """One trajectory: its numbers, its turns, its answer."""
    stats = [f'reward <b class="reward">{_num(reward)}</b>']
    if advantage is not None:
        stats.append(f'advantage <b class="advantage">{float(advantage):+.4g}</b>')
    stats += [f"{traj.num_searches} searches", f"{traj.num_sampled} sampled tokens", f"finish {_e(traj.finish_reason)}"]
    answer = "(none)" if traj.answer is None else _e(traj.answer)
    turns = "".join(_turn_html(t) for t in split_turns(traj, tokenizer))
    kind = "correct" if reward >= 1.0 - 1e-6 else "wrong"
    return (f'<article class="traj {kind} {css}" data-reward="{float(reward)!r}"'
            + (f' data-advantage="{float(advantage)!r}"' if advantage is not None else "") + ">"
            f"<h3>{_e(label)}</h3><p class=\"stats\">{' · '.join(stats)}</p>{extra}"
            f'<ol class="turns">{turns}</ol><p class="answer">answer: <b class="extracted">{answer}</b></p></article>')


def _question_html(group, heading: str) -> str:
    golds = ", ".join(f'<span class="gold">{_e(g)}</span>' for g in group.golds)
    return f'<h2>{_e(heading)}: <span class="question">{_e(group.question)}</span></h2><p>gold: {golds}</p>'


# ---------------------------------------------------------------- pages

def grpo_page(groups: Sequence, advantages, step: int, tokenizer, *, limit: int | None = None) -> str:
    """The page of GRPO step `step`: the first `limit` groups (all when None), each trajectory
    with its turns, answer, reward and advantage.

    groups: `train.rollouts.Group`s of the step (question-major, as rolled out);
    advantages: [sum of G] the group-normalised advantages in the same order (the rows of
    `rollouts.grpo_arrays`, padding rows cut off)."""
    adv = np.asarray(advantages, np.float64).reshape(-1)
    total = sum(len(g.trajectories) for g in groups)
    if adv.shape[0] != total:
        raise ValueError(f"advantages must have one value per trajectory ({total}), got {adv.shape[0]}")
    shown = list(groups) if limit is None else list(groups)[:limit]
    rewards = np.concatenate([np.asarray(g.rewards, np.float64) for g in groups]) if groups else np.zeros(0)
    mean = float(rewards.mean()) if rewards.size else float("nan")
    sections, lo = [], 0
    for gi, g in enumerate(groups):
        n = len(g.trajectories)
        if gi < len(shown):
            cards = "".join(_trajectory_html(t, tokenizer, label=f"trajectory {j + 1}", reward=float(g.rewards[j]),
                                             advantage=float(adv[lo + j]))
                            for j, t in enumerate(g.trajectories))
            sections.append(f'<section class="group">{_question_html(g, f"Group {gi + 1}")}'
                            f'<div class="trajs">{cards}</div></section>\n')
        lo += n
    title = f"GRPO step {step}: reward {mean:.3f}"
    body = (f"<h1>{_e(title)}</h1>\n<p class=\"stats\">{len(groups)} groups, {total} trajectories, mean reward "
            f"{mean:.3f}; showing {len(shown)} group(s).</p>\n" + "".join(sections))
    return _page(title, body)


def kl_strip(traj, kl, tokenizer, *, scale: float) -> str:
    """The student's sampled tokens as a row of spans coloured by their per-token KL.

    kl: [len(response_ids)] the divergence at each response position (read at sampled tokens
    only, loss_mask 1); each span holds one token's text and its value in the title attribute;
    colour intensity sqrt(min(kl / scale, 1))."""
    values = iter(_sampled(traj, kl))
    parts, prev = [], 1
    for tid, m in zip(traj.response_ids, traj.loss_mask):
        if not m:
            prev = 0
            continue
        if not prev and parts:  # a context block (observation, corrective message) was here
            parts.append('<i class="gap" title="context">⋯</i>')
        prev, v = 1, next(values)
        a = float(np.sqrt(np.clip(v / scale, 0.0, 1.0))) if np.isfinite(v) and scale > 0 else 0.0
        text = tokenizer.decode([int(tid)]) or "∅"
        parts.append(f'<span style="background:rgba(214,39,40,{a:.3f})" title="{_num(v)}">{_e(text)}</span>')
    return f'<div class="kl">{"".join(parts)}</div>'


def _sampled(traj, kl) -> np.ndarray:
    """The values of a [>= len(response_ids)] per-position array at the sampled tokens."""
    kl = np.asarray(kl, np.float64).reshape(-1)
    if kl.shape[0] < len(traj.response_ids):
        raise ValueError(f"kl has {kl.shape[0]} values for {len(traj.response_ids)} response tokens")
    return kl[:len(traj.response_ids)][np.asarray(traj.loss_mask, bool)]


def ofsd_page(groups: Sequence, pairs: Sequence, round_index: int, tokenizer, *, rendering: str,
              kl: Sequence | None = None, limit: int | None = None, note: str = "") -> str:
    """The page of OFSD round `round_index`: the first `limit` pairs (all when None), each student
    beside its sibling, the privileged context the teacher saw, and the student's per-token KL.

    groups: the teacher's rollouts (`train.rollouts.Group`); pairs: `distill.Pair`s
    (`distill.select_pairs`); rendering: config.ofsd.rendering; kl: one [len(response_ids)]
    array per shown pair (`TrajectoryLog.student_kl`), None to show no strip; note: a
    line under the heading (what the KL measures)."""
    shown = list(pairs) if limit is None else list(pairs)[:limit]
    if kl is not None and len(kl) != len(shown):
        raise ValueError(f"kl must hold one array per shown pair ({len(shown)}), got {len(kl)}")
    students = [groups[p.group].trajectories[p.student] for p in shown]
    sampled_kl = [_sampled(t, k) for t, k in zip(students, kl)] if kl is not None else []
    finite = [v for k in sampled_kl for v in k if np.isfinite(v)]
    scale = max(max(finite, default=0.0), 1e-9)
    sections = []
    for i, p in enumerate(shown):
        g = groups[p.group]
        stu, sib = g.trajectories[p.student], g.trajectories[p.sibling]
        context = render_context(**sibling_record(g, p.sibling, rendering))
        extra = ""
        if kl is not None:
            mean = float(np.mean(sampled_kl[i])) if sampled_kl[i].size else float("nan")
            extra = (f'<p class="stats">per-token KL(teacher ‖ student) of the sampled tokens: mean '
                     f'<b class="mean-kl">{mean:.4g}</b> nats (hover a token for its value)</p>'
                     + kl_strip(stu, kl[i], tokenizer, scale=scale))
        student = _trajectory_html(stu, tokenizer, label=f"student: trajectory {p.student + 1}",
                                   reward=float(g.rewards[p.student]), css="student", extra=extra)
        sibling = _trajectory_html(sib, tokenizer, label=f"sibling: trajectory {p.sibling + 1}",
                                   reward=float(g.rewards[p.sibling]), css="sibling")
        sections.append(f'<section class="pair">{_question_html(g, f"Group {p.group + 1}")}'
                        f'<h3>privileged context the teacher saw ({_e(rendering)})</h3>'
                        f'<pre class="context privileged">{_e(context)}</pre>'
                        f'<div class="side">{student}{sibling}</div></section>\n')
    title = f"OFSD round {round_index}: {len(pairs)} students"
    legend = f"KL colour scale: 0 (white) to {scale:.4g} nats (red)." if kl is not None else ""
    body = (f"<h1>{_e(title)}</h1>\n<p class=\"stats\">{len(pairs)} students in {len({p.group for p in pairs})} "
            f"of {len(groups)} groups; showing {len(shown)}. {_e(note)} {_e(legend)}</p>\n" + "".join(sections))
    return _page(title, body)


# ---------------------------------------------------------------- files

def grpo_name(step: int) -> str:
    return f"step_{step:06d}.html"


def ofsd_name(round_index: int) -> str:
    return f"ofsd_round_{round_index:03d}.html"


_TITLE = re.compile(r"<title>(.*?)</title>", re.DOTALL)
_PAGE = re.compile(r"(step_\d+|ofsd_round_\d+)\.html")


def write_page(workdir: str, name: str, page: str) -> str:
    """Write WORKDIR/trajectories/NAME atomically (a temp file, then a rename; a local
    directory or a bucket URI: `paths.py`); its path."""
    folder = workdir_path(workdir) / PAGES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / name, page)
    return str(folder / name)


def write_index(workdir: str) -> str:
    """(Re)write WORKDIR/trajectories/index.html atomically: a link to every page there, GRPO
    steps then OFSD rounds in order, each under its page's title."""
    folder = workdir_path(workdir) / PAGES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in folder.iterdir() if _PAGE.fullmatch(p.name))
    items = {"step": [], "ofsd": []}
    for n in names:
        with (folder / n).open("r") as f:
            m = _TITLE.search(f.read(4096))
        title = html.unescape(m.group(1)) if m else n
        items["step" if n.startswith("step_") else "ofsd"].append(f'<li><a href="{_e(n)}">{_e(title)}</a></li>')
    body = ("<h1>Trajectories</h1>\n"
            f"<h2>GRPO steps</h2><ul>{''.join(items['step']) or '<li>none yet</li>'}</ul>\n"
            f"<h2>OFSD rounds</h2><ul>{''.join(items['ofsd']) or '<li>none yet</li>'}</ul>\n")
    page = _page("Trajectories", body, index_link=False)
    atomic_write_text(folder / "index.html", page)
    return str(folder / "index.html")
