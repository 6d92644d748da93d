"""Sphinx configuration for the django-reliable-mail documentation.

The presets table is generated at build time from ``django_reliable_mail.providers``, so the
documented hosts, limits, rules and sources never drift from the code.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from django_reliable_mail import __version__  # noqa: E402

project = "django-reliable-mail"
author = "django-reliable-mail developers"
release = version = __version__
extensions = []
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = []


def _cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_presets_table(app):
    from django_reliable_mail.providers import PRESETS, SOURCES

    lines = []
    for name in sorted(PRESETS):
        values = PRESETS[name]
        lines += [name, "-" * len(name), ""]
        lines += [
            f"- Host and port: ``{values['HOST']}:{values['PORT']}``, TLS ``{values['TLS']}``",
            f"- AUTH mechanisms: {', '.join(values['AUTH_MECHANISMS'])}",
        ]
        for key, label in (
            ("DISABLE_EXTENSIONS", "Disabled extensions"),
            ("MAX_RECIPIENTS", "Recipients per transaction"),
            ("MAX_CONNECTIONS", "Connections"),
            ("MAX_MESSAGES_PER_CONNECTION", "Messages per connection"),
            ("RATE_LIMIT", "Rate limit"),
            ("USERNAME", "Username"),
        ):
            if key in values:
                value = values[key]
                value = ", ".join(value) if isinstance(value, list) else value
                lines.append(f"- {label}: ``{value}``")
        rules = values.get("REPLY_RULES", [])
        if rules:
            lines.append("- Reply rules:")
            lines.append("")
            for rule in rules:
                match = " ".join(
                    f"{k.lower()} ``{rule[k]}``" for k in ("CODE", "ENHANCED", "TEXT") if k in rule
                )
                then = rule["OUTCOME"] + (" + pause provider" if rule.get("PAUSE_PROVIDER") else "")
                after = f", retry after {rule['RETRY_AFTER']} s" if "RETRY_AFTER" in rule else ""
                lines.append(f"  - {match} → **{then}**{after}: {_cell(rule['DESCRIPTION'])}")
            lines.append("")
        lines.append("- Sources:")
        lines.append("")
        for source in SOURCES[name]:
            lines.append(f"  - {_cell(source)}")
        lines.append("")
    target = Path(app.srcdir) / "_generated" / "presets_table.rst"
    target.parent.mkdir(exist_ok=True)
    text = "\n".join(lines) + "\n"
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


def setup(app):
    app.connect("builder-inited", write_presets_table)
