"""TOML reading on every supported Python: the standard library's ``tomllib`` (3.11+), else
``tomli``, its backport with the same API (a dependency on Python 3.10)."""
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

__all__ = ["tomllib"]
