"""A module that fails as it is imported: OAUTH2_TOKEN pointing here must be reported."""

raise RuntimeError("this module cannot be imported")
