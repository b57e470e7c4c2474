"""``python -m xfverify``: the same command line as ``xfverify``."""

from xfverify.evaluator.commands.cli import main

if __name__ == "__main__":
    main()
