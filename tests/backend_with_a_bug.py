"""A stand-in back-end that imports a module of xfverify that does not exist (a bug, not the user's environment)."""

from xfverify.evaluator import no_such_module_xfverify_test  # noqa: F401
