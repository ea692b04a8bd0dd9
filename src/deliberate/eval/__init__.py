"""``deliberate eval``: was deliberating worth it? A flow against compute-matched baselines on a
dataset, scored per item, compared with paired statistics, every item a normal run record.

- :mod:`.datasets`: JSONL / CSV files and the built-in sets, validated before any call
- :mod:`.scorers`: exact, includes, regex, numeric, choice, python, code, judge, and plugins
- :mod:`.arms`: the flow, the baselines (single, self-consistency, best-of-judge, another flow)
- :mod:`.record`: the eval record under ``evals/`` (atomic, versioned, resumable)
- :mod:`.runner`: the eval service (one request in, one outcome out, progress events)
- :mod:`.analysis`: scores, paired comparisons, per-round ablation, flips, judge audit
- :mod:`.stats`: the statistics (pure Python); :mod:`.sandbox`: model-written code, contained
"""
