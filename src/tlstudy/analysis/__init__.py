"""The analysis, read from a stored study: the exports (export), REPORT.md (report) with the report's
tables (tables), its claims judged (claims) by paired statistics (statistics), the figures (plots),
and optuna-dashboard on the storage (dashboard)."""

__all__ = ["claims", "dashboard", "export", "plots", "report", "statistics", "tables"]
