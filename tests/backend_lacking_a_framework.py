"""A stand-in back-end whose framework is not installed (a user's environment to fix)."""

import no_such_framework_xfverify_test  # noqa: F401
