"""The study's reports, rendered from result files (never from MLflow).

* :mod:`fsanet.report.summary`: ``results/metrics/summary.json`` from the evaluations' metrics files,
  and the selections the tables make from it.
* :mod:`fsanet.report.efficiency`: table T1 and the efficiency plot, from ``fsanet bench attention``.
* :mod:`fsanet.report.study_tables`: tables T2 (band ablation), T3 (methods) and T4 (per class).
* :mod:`fsanet.report.cost`: a study profile's estimated GPU-hours (``fsanet tables cost``).
* :mod:`fsanet.report.findings`: ``findings.md``, each claim of the study with its numbers and verdict.
* :mod:`fsanet.report.plots`: the ablation curve and the qualitative grid;
  :mod:`fsanet.report.dvc_plots`: the offline page template of ``dvc plots show``.
* :mod:`fsanet.report.names`: every display name; :mod:`fsanet.report.text`: number formatting, the
  LaTeX escaper and the one Markdown/LaTeX/CSV table writer.
"""
