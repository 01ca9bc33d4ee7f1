"""The study: the orchestration under Ray Tune (runner), the per-cell design of search budget and
replicates (design), Optuna's sampler and pruner inside Tune with what a trial leaves (search), and
where the study is kept, with its heartbeats (storage)."""

__all__ = ["design", "runner", "search", "storage"]
