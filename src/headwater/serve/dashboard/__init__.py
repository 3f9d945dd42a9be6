"""The web dashboard, served by ``headwater up`` at ``/dashboard`` beside the collector and the API.

Server-rendered pages (Jinja2 templates, no build step) whose charts are drawn by ECharts
(vendored in ``serve/static/vendor/echarts``) from rows embedded in the page; the live page
updates over server-sent events. Modules:

- :mod:`.pages`: the pages and charts, declared in ``pages.toml`` and ``$HEADWATER_HOME/dashboard.toml``;
- :mod:`.sources`: what charts read — the query API's own metric functions (one definition,
  the same privacy floor), the live counts with the stream's lag and watermark, ``quality.results``;
- :mod:`.charts`: a chart's rows (the numbers drawn, the CSV);
- :mod:`.auth`: the read token, from the login cookie or a bearer header;
- :mod:`.web`: the routes (:func:`~.web.create_dashboard`).

User guide: ``docs/dashboard.md``.
"""
