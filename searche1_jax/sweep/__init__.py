"""Parallel experiments: a sweep as vmapped populations (`python -m searche1_jax.sweep`).

spec.py parses and splits the sweep; population.py holds the stacked, vmapped, member-sharded
steps; setup.py / trainer.py build and train one population; report.py writes the summary
and the learning curves; run.py ties them together.
"""
