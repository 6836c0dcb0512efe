"""Built-in plugins, one package per kind; each ``__init__`` is a thin hookimpl module that names
its backends by dotted path, so building a plugin manager imports none of their libraries."""
