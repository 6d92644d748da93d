"""django-reliable-mail: reliable transactional email over SMTP for Django."""

#: The one place the version is written (pyproject.toml and the docs read it from here).
__version__ = "0.1.0"
