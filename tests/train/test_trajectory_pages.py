"""The trajectory pages (train/trajectory_pages.py, train/trajectory_log.py): parsed back with
Python's html.parser, they hold every question, turn, query, retrieved title, answer, gold,
reward and advantage, escape the policy's tags, show the teacher's context as the OFSD step
builds it, and draw one KL span per sampled token with the value a numpy oracle computes."""
import html.parser
import os
import re
import shutil
import subprocess
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from searche1_jax.rl.grpo import group_advantages
from searche1_jax.rl.ofsd import fused_forward_kl
from searche1_jax.rollout import protocol as P
from searche1_jax.train import trajectory_pages as pages
from searche1_jax.train.distill import Pair, ofsd_arrays, select_pairs
from searche1_jax.train.rollouts import Group, grpo_arrays
from searche1_jax.train.trajectory_log import TrajectoryLog, token_forward_kl
from tests.train.test_distill import CharTokenizer, trajectory

VOID = {"meta", "br", "hr", "img", "input", "link", "wbr"}
PROMPT = "Instruction.\nQuestion: {q}\n"


# ---------------------------------------------------------------- a tiny DOM from html.parser

class Node:
    def __init__(self, tag, attrs, parent=None):
        self.tag, self.attrs, self.parent, self.children = tag, dict(attrs), parent, []

    @property
    def classes(self):
        return set((self.attrs.get("class") or "").split())

    def text(self):
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def all(self, tag=None, cls=None):
        out = []
        for c in self.children:
            if isinstance(c, Node):
                if (tag is None or c.tag == tag) and (cls is None or cls in c.classes):
                    out.append(c)
                out += c.all(tag, cls)
        return out

    def one(self, tag=None, cls=None):
        found = self.all(tag, cls)
        assert len(found) == 1, (tag, cls, len(found))
        return found[0]


class Strict(html.parser.HTMLParser):
    """Builds the tree and records every nesting error (an end tag that closes another)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.cur, self.errors, self.tags, self.links = self.root, [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [v for k, v in attrs if k in ("href", "src")]
        node = Node(tag, attrs, self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.cur.children.append(Node(tag, attrs, self.cur))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if self.cur.tag != tag:
            self.errors.append(f"</{tag}> closes <{self.cur.tag}>")
            return
        self.cur = self.cur.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def parse(page: str) -> Node:
    p = Strict()
    p.feed(page)
    p.close()
    assert not p.errors, p.errors[:5]
    assert p.cur is p.root, f"unclosed <{p.cur.tag}>"
    # the policy's and the protocol's tags are text, never elements
    assert not {"search", "answer", "think", "information", "script"} & set(p.tags), set(p.tags)
    # self-contained: inline CSS, no script, links only to sibling pages, nothing fetched
    assert page.startswith("<!DOCTYPE html>") and "url(" not in page and "@import" not in page
    assert all(re.fullmatch(r"[\w.]+\.html", link) for link in p.links), p.links
    return p.root


# ---------------------------------------------------------------- scripted groups

def obs(*docs):
    return P.format_observation([types.SimpleNamespace(contents=f"{t}\n{x}") for t, x in docs])


LONG = "Spielberg " * 70  # 700 characters: the page shows PASSAGE_CHARS of it


def make_groups(tok):
    q1 = "Where was the director of <Jaws> & co. born?"
    p1 = PROMPT.format(q=q1)
    sibling = trajectory(tok, p1, [("<think> not sure </think> I am not sure.", 1), (P.INVALID_ACTION_MESSAGE, 0),
                                   ("<search> director of Jaws </search>", 1),
                                   (obs(("Jaws (film)", "directed by Steven Spielberg"),
                                        ("Steven Spielberg", "born in Cincinnati")), 0),
                                   ("<answer> Cincinnati </answer>", 1)],
                         ["director of Jaws"], "Cincinnati")
    student = trajectory(tok, p1, [("<search> Jaws </search>", 1), (obs(("Jaws", "a 1975 film")), 0),
                                   ("<search> Spielberg birthplace </search>", 1),
                                   (obs(("Steven Spielberg", LONG)), 0), ("<answer> Boston </answer>", 1)],
                         ["Jaws", "Spielberg birthplace"], "Boston")
    g1 = Group(q1, ("Cincinnati", "Cincinnati, Ohio"), [sibling, student], np.array([1.0, 0.0], np.float32))
    q2 = "Who wrote Hamlet?"
    p2 = PROMPT.format(q=q2)
    a = trajectory(tok, p2, [("<answer> Shakespeare </answer>", 1)], [], "Shakespeare")
    b = trajectory(tok, p2, [("<search> Hamlet author </search>", 1), (obs(("Hamlet", "a tragedy by Shakespeare")), 0),
                             ("<answer> Shakespeare </answer>", 1)], ["Hamlet author"], "Shakespeare")
    c = trajectory(tok, p2, [("I think it was Marlowe", 1)], [], None)
    for t, reason in ((sibling, "answer"), (student, "answer"), (a, "answer"), (b, "answer"), (c, "length")):
        t.finish_reason = reason
    g2 = Group(q2, ("William Shakespeare",), [a, b, c], np.array([1.0, 1.0, 0.0], np.float32))
    return [g1, g2]


def advantages_of(groups):
    return grpo_arrays(groups, step=3, length_bucket=8, rows_multiple=1, pad_id=0)["advantages"]


# ---------------------------------------------------------------- GRPO page

def test_split_turns_follows_the_loss_mask_and_the_agents_record():
    tok = CharTokenizer()
    sibling, student = make_groups(tok)[0].trajectories
    turns = pages.split_turns(sibling, tok)
    assert [t.policy for t in turns] == ["<think> not sure </think> I am not sure.",
                                         "<search> director of Jaws </search>", "<answer> Cincinnati </answer>"]
    # the corrective message names `<search> and </search>`: it is recognised, never read as a query
    assert [t.corrective for t in turns] == [True, False, False]
    assert [t.query for t in turns] == [None, "director of Jaws", None]
    assert turns[1].passages == [("Jaws (film)", "directed by Steven Spielberg"),
                                 ("Steven Spielberg", "born in Cincinnati")]
    assert [t.query for t in pages.split_turns(student, tok)] == ["Jaws", "Spielberg birthplace", None]


def test_grpo_page_shows_every_question_turn_query_title_answer_and_number():
    tok = CharTokenizer()
    groups = make_groups(tok)
    adv = advantages_of(groups)
    # the oracle: group-normalised rewards, unbiased std (METHOD §2)
    np.testing.assert_allclose(adv, [0.7071, -0.7071, 0.5774, 0.5774, -1.1547], atol=1e-4)
    root = parse(pages.grpo_page(groups, adv, 12, tok))
    assert root.one("title").text() == "GRPO step 12: reward 0.600"
    assert [q.text() for q in root.all("span", "question")] == [g.question for g in groups]
    assert [s.text() for s in root.all("span", "gold")] == ["Cincinnati", "Cincinnati, Ohio", "William Shakespeare"]
    cards = root.all("article", "traj")
    trajs = [t for g in groups for t in g.trajectories]
    assert len(cards) == len(trajs) == 5
    rewards = np.concatenate([g.rewards for g in groups])
    for card, t, r, a in zip(cards, trajs, rewards, adv):
        assert float(card.attrs["data-reward"]) == r and card.one("b", "reward").text() == f"{r:.6g}"
        assert float(card.attrs["data-advantage"]) == pytest.approx(a, abs=1e-6)
        assert float(card.one("b", "advantage").text()) == pytest.approx(a, abs=1e-3)
        assert card.one("b", "extracted").text() == (t.answer if t.answer is not None else "(none)")
        assert [q.text() for q in card.all("q")] == t.queries
        # each turn's text, as the policy wrote it (tags as text)
        assert [p.text() for p in card.all("pre", "policy")] == [s.policy for s in pages.split_turns(t, tok)]
        assert ("correct" in card.classes) == (r == 1)
    sib = cards[0]
    assert "<search> director of Jaws </search>" in sib.text()
    assert sib.one("p", "corrective").text().endswith(P.INVALID_ACTION_MESSAGE.strip())
    assert [s.text() for s in sib.all("span", "title")] == ["Jaws (film)", "Steven Spielberg"]
    # passages are folded, and capped
    assert all(d.parent.tag == "div" and d.all("summary") for d in sib.all("details"))
    assert [d.one("p", "passage").text() for d in sib.all("details")] == ["directed by Steven Spielberg",
                                                                          "born in Cincinnati"]
    long = cards[1].all("p", "passage")[-1].text()
    assert long.startswith(LONG[:pages.PASSAGE_CHARS]) and len(long) < pages.PASSAGE_CHARS + 40
    assert cards[4].one("b", "extracted").text() == "(none)" and "finish length" in cards[4].text()


def test_grpo_page_limit_shows_the_first_groups_and_refuses_mismatched_advantages():
    tok = CharTokenizer()
    groups = make_groups(tok)
    adv = advantages_of(groups)
    root = parse(pages.grpo_page(groups, adv, 1, tok, limit=1))
    assert [q.text() for q in root.all("span", "question")] == [groups[0].question]
    assert "mean reward 0.600" in root.text()  # the summary is over every group
    with pytest.raises(ValueError, match=r"one value per trajectory \(5\), got 4"):
        pages.grpo_page(groups, adv[:4], 1, tok)


# ---------------------------------------------------------------- OFSD page and the KL

def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_forward_kl(student_logits, teacher_logits):
    """The oracle: Σ_v p_T (log p_T − log p_S) per row, in float64."""
    ls, lt = np_log_softmax(np.float64(student_logits)), np_log_softmax(np.float64(teacher_logits))
    return (np.exp(lt) * (lt - ls)).sum(-1)


def test_token_forward_kl_matches_numpy_and_its_mean_is_the_ofsd_loss():
    rng = np.random.default_rng(0)
    n, d, v = 37, 8, 50
    hs, ht = rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32)
    ws, wt = rng.normal(size=(d, v)).astype(np.float32), rng.normal(size=(d, v)).astype(np.float32)
    kl = np.asarray(token_forward_kl(jnp.asarray(hs), jnp.asarray(ws), jnp.asarray(ht), jnp.asarray(wt), chunk=16))
    np.testing.assert_allclose(kl, np_forward_kl(hs @ ws, ht @ wt), rtol=1e-5, atol=1e-6)
    assert (kl >= 0).all()
    mask = (rng.random(n) < 0.6).astype(np.float32)
    loss = fused_forward_kl(jnp.asarray(hs), jnp.asarray(ws), jnp.asarray(ht), jnp.asarray(wt), None,
                            jnp.asarray(mask), chunk=16)
    np.testing.assert_allclose(float(loss), (kl * mask).sum() / mask.sum(), rtol=1e-5)


def teacher_context(tok, group, pair, rendering):
    """The oracle: the text the OFSD step's teacher tokens hold between instruction and question."""
    arrays = ofsd_arrays([Pair(0, pair.sibling, pair.student)], [group], tok, rendering=rendering,
                         length_bucket=8, rows_multiple=1)
    text = tok.decode(arrays["teacher_tokens"][0])
    start = group.trajectories[pair.student].question_start
    return text[start:text.index("Question:", start)]


@pytest.mark.parametrize("rendering", ["queries", "full", "all_siblings"])
def test_ofsd_page_shows_student_beside_sibling_with_the_teachers_context_and_a_kl_strip(rendering):
    tok = CharTokenizer()
    groups = make_groups(tok)
    pairs = select_pairs(groups)
    assert pairs == [Pair(0, 0, 1), Pair(1, 0, 1), Pair(1, 0, 2)]  # shortest correct is the sibling
    rng = np.random.default_rng(1)
    kl = []
    for p in pairs:  # a hand-computed KL from random logits, one value per response position
        r = len(groups[p.group].trajectories[p.student].response_ids)
        kl.append(np_forward_kl(rng.normal(size=(r, 11)), 2 * rng.normal(size=(r, 11))))
    root = parse(pages.ofsd_page(groups, pairs, 0, tok, rendering=rendering, kl=kl[:2], limit=2))
    assert root.one("title").text() == "OFSD round 0: 3 students"
    sections = root.all("section", "pair")
    assert len(sections) == 2
    for sec, p, k in zip(sections, pairs, kl):
        g = groups[p.group]
        stu = g.trajectories[p.student]
        assert sec.one("span", "question").text() == g.question
        assert sec.one("pre", "privileged").text() == teacher_context(tok, g, p, rendering)
        side = sec.one("div", "side")
        student, sibling = [c for c in side.children if isinstance(c, type(side))]
        assert "student" in student.classes and "sibling" in sibling.classes
        assert [q.text() for q in sibling.all("q")] == g.trajectories[p.sibling].queries
        assert [q.text() for q in student.all("q")] == stu.queries
        spans = student.one("div", "kl").all("span")
        sampled = [i for i, m in enumerate(stu.loss_mask) if m]
        assert len(spans) == stu.num_sampled == len(sampled)
        np.testing.assert_allclose([float(s.attrs["title"]) for s in spans], k[sampled], rtol=1e-5)
        assert "".join(s.text() for s in spans) == "".join(tok.decode([stu.response_ids[i]]) for i in sampled)
        assert float(student.one("b", "mean-kl").text()) == pytest.approx(k[sampled].mean(), rel=1e-3)
        assert "style" in spans[0].attrs and spans[0].attrs["style"].startswith("background:rgba(214,39,40,")


def test_ofsd_page_without_students_or_kl_still_renders():
    tok = CharTokenizer()
    groups = make_groups(tok)
    root = parse(pages.ofsd_page(groups, [], 3, tok, rendering="queries"))
    assert root.one("title").text() == "OFSD round 3: 0 students" and not root.all("section")
    root = parse(pages.ofsd_page(groups, select_pairs(groups), 3, tok, rendering="queries"))
    assert not root.all("div", "kl") and len(root.all("section", "pair")) == 3
    with pytest.raises(ValueError, match="one array per shown pair"):
        pages.ofsd_page(groups, select_pairs(groups), 3, tok, rendering="queries", kl=[np.zeros(3)])


# ---------------------------------------------------------------- files, and the KL of a real model

def test_pages_and_index_are_written_atomically(tmp_path):
    tok = CharTokenizer()
    groups = make_groups(tok)
    log = TrajectoryLog(str(tmp_path), tok, limit=1, rendering="queries", length_bucket=8, temperature=1.0)
    log.grpo_step(groups, np.concatenate([advantages_of(groups), np.zeros(3)]), 12)  # padded rows are cut
    log.ofsd_round(groups, select_pairs(groups), 0)
    log.grpo_step(groups, advantages_of(groups), 2)
    folder = tmp_path / pages.PAGES_DIR
    assert sorted(os.listdir(folder)) == ["index.html", "ofsd_round_000.html", "step_000002.html",
                                          "step_000012.html"]  # no temp file left behind
    index = parse((folder / "index.html").read_text())
    links = [(a.attrs["href"], a.text()) for a in index.all("a")]
    assert links == [("step_000002.html", "GRPO step 2: reward 0.600"),
                     ("step_000012.html", "GRPO step 12: reward 0.600"),
                     ("ofsd_round_000.html", "OFSD round 0: 3 students")]
    step = parse((folder / "step_000012.html").read_text())
    assert len(step.all("section", "group")) == 1 and step.one("a").attrs["href"] == "index.html"
    assert "no per-token kl" in (folder / "ofsd_round_000.html").read_text().lower()
    assert all(os.stat(folder / n).st_mode & 0o777 == 0o644 for n in os.listdir(folder))
    assert os.path.getsize(folder / "step_000012.html") < 20_000


def test_student_kl_of_a_model_matches_its_full_logits(tmp_path):
    """The jitted forward of the shown students against an oracle from the models' full logits:
    response token r of the student is predicted at position len(prompt) - 1 + r of the student
    sequence and at that position + len(context) of the teacher's."""
    from searche1_jax.model.config import get_preset
    from searche1_jax.model.create import create_model
    from searche1_jax.rl.ofsd import render_context
    from searche1_jax.train.distill import sibling_record
    from searche1_jax.train.state import Binder, params_of

    tok = CharTokenizer()  # ids are code points < 128 < the tiny vocabulary
    groups = make_groups(tok)
    pairs = select_pairs(groups)
    student_model, teacher_model = create_model(get_preset("tiny"), seed=1), create_model(get_preset("tiny"), seed=2)
    log = TrajectoryLog(str(tmp_path), tok, limit=4, rendering="queries", length_bucket=64, temperature=0.7,
                        binder=Binder(student_model), chunk=64, rows=2)  # 3 students: 2 calls
    kl = log.student_kl(groups, pairs, params_of(student_model), params_of(teacher_model))
    seqs, teacher_seqs, offsets = [], [], []
    for p in pairs:
        g = groups[p.group]
        stu = g.trajectories[p.student]
        seq = stu.prompt_ids + stu.response_ids
        ctx = tok.encode(render_context(**sibling_record(g, p.sibling, "queries")))
        seqs.append(seq)
        teacher_seqs.append(seq[:stu.question_start] + ctx + seq[stu.question_start:])
        offsets.append(len(ctx))
    # full logits [V] at every position; right padding never reaches an earlier position (causal)
    width = max(len(x) for x in seqs + teacher_seqs)
    padded = np.zeros((2 * len(pairs), width), np.int32)
    for i, x in enumerate(seqs + teacher_seqs):
        padded[i, :len(x)] = x
    logits = jax.jit(lambda tokens, s, t: jnp.concatenate([s(tokens[:len(pairs)]), t(tokens[len(pairs):])]))
    z = np.asarray(logits(jnp.asarray(padded), student_model, teacher_model)) / 0.7
    for i, (p, k) in enumerate(zip(pairs, kl)):
        stu = groups[p.group].trajectories[p.student]
        pos = np.arange(len(stu.prompt_ids) - 1, len(seqs[i]) - 1)
        assert k.shape == (len(stu.response_ids),)
        np.testing.assert_allclose(k, np_forward_kl(z[i, pos], z[len(pairs) + i, pos + offsets[i]]),
                                   rtol=2e-4, atol=1e-5)
    # the page the log writes carries these values
    path = log.ofsd_round(groups, pairs, 1, params_of(student_model), params_of(teacher_model))
    root = parse(open(path).read())
    spans = root.all("section", "pair")[0].one("div", "kl").all("span")
    stu = groups[0].trajectories[1]
    want = kl[0][np.asarray(stu.loss_mask, bool)]
    np.testing.assert_allclose([float(s.attrs["title"]) for s in spans], want, rtol=1e-5)


# ---------------------------------------------------------------- the agent's own trajectories

def test_pages_of_real_agent_trajectories_split_turns_as_the_agent_wrote_them():
    """Real BPE tokens from the scripted agent (tests/rollout/test_agent.py): corrective
    message, several searches, text glued after `</search>`."""
    from searche1_jax.model.checkpoint import smollm2_gguf_path
    from searche1_jax.model.tokenizer import Tokenizer
    from searche1_jax.rollout.sampler import SamplingParams
    from tests.rollout.test_agent import SEGMENTS, build

    tok = Tokenizer.from_gguf(smollm2_gguf_path())
    policy, agent, retriever = build(tok, max_turns=3)
    trajs = agent.run(policy, ["q0", "q1", "q2", "q3"], jax.random.key(0), SamplingParams(greedy=True))
    groups = [Group("q0 or q1", ("Paris",), trajs[:2], np.array([1.0, 0.0], np.float32)),
              Group("q2 or q3", ("x",), trajs[2:], np.array([1.0, 0.0], np.float32))]
    adv = group_advantages(np.array([1, 0, 1, 0], np.float32), np.array([0, 0, 1, 1]))
    root = parse(pages.grpo_page(groups, adv, 1, tok))
    cards = root.all("article", "traj")
    row2 = cards[2]
    assert [p.text() for p in row2.all("pre", "policy")] == SEGMENTS[2]
    assert [q.text() for q in row2.all("q")] == ["beta", "gamma"]
    assert len(row2.all("p", "corrective")) == 1
    titles = ['"Tbeta0"', '"Tbeta1"', '"Tgamma0"', '"Tgamma1"']  # as stored: quoted
    assert [s.text() for s in row2.all("span", "title")] == titles
    row3 = cards[3]
    assert [q.text() for q in row3.all("q")] == ["d1", "d2", "d3"]
    assert row3.one("b", "extracted").text() == "z"
    assert [p.text() for p in row3.all("p", "passage")][:1] == ["text about d1 number 0"]


# ---------------------------------------------------------------- a real browser

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


@pytest.mark.slow  # needs Debian's chromium-headless-shell (apt-get install chromium-headless-shell)
def test_pages_load_in_headless_chromium_and_the_screenshot_shows_them(tmp_path):
    from PIL import Image

    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        pytest.skip(f"no headless browser on PATH (tried {', '.join(BROWSERS)})")
    tok = CharTokenizer()
    groups = make_groups(tok)
    pairs = select_pairs(groups)
    kl = [np.linspace(0, 1, len(groups[p.group].trajectories[p.student].response_ids)) for p in pairs]
    workdir = str(tmp_path)
    pages.write_page(workdir, pages.grpo_name(12), pages.grpo_page(groups, advantages_of(groups), 12, tok))
    pages.write_page(workdir, pages.ofsd_name(0), pages.ofsd_page(groups, pairs, 0, tok, rendering="queries", kl=kl))
    pages.write_index(workdir)
    folder = tmp_path / pages.PAGES_DIR
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--enable-logging=stderr",
              "--v=0", f"--user-data-dir={tmp_path / 'profile'}"]
    for name, expect in (("step_000012.html", groups[0].question), ("ofsd_round_000.html", "privileged context"),
                         ("index.html", "GRPO step 12")):
        height = 2400 if name.startswith("ofsd") else 900
        url = (folder / name).as_uri()
        dom = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert expect in html.unescape(dom.stdout), name
        # no console message, no failed load (the page fetches nothing and runs no script)
        assert "CONSOLE" not in dom.stderr and "Failed to load" not in dom.stderr and "net::ERR" not in dom.stderr
        shot = tmp_path / f"{name}.png"
        run = subprocess.run(common + [f"--screenshot={shot}", f"--window-size=1200,{height}", url],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
        img = np.asarray(Image.open(shot).convert("RGB"), np.int32)
        assert img.shape[:2] == (height, 1200)
        # content drawn: many pixels differ from the white background, in several colours
        assert (img.min(-1) < 200).mean() > (0.001 if name == "index.html" else 0.02), name
        assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20, name
        if name.startswith("ofsd"):  # the KL strip is drawn: strongly red token backgrounds
            red = (img[..., 0] > 200) & (img[..., 1] < 120) & (img[..., 2] < 120)
            assert red.sum() > 100, red.sum()
