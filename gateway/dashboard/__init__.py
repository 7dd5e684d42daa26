"""The operator dashboard at ``/dashboard`` (aiohttp-jinja2, autoescaped), behind an admin key:
``views`` (routes), ``session`` (sign-in), ``stats`` (the figures), ``templates/``."""
