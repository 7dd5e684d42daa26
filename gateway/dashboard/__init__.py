"""The operator dashboard at ``/dashboard`` (jinja2 templates, autoescaped), behind an admin key:
``views`` (routes), ``session`` (sign-in), ``stats`` (the figures), ``templates/``."""
