"""``python -m jresnet COMMAND ...``: the same as the ``jresnet`` command (`jresnet.cli`)."""

import sys

from jresnet import cli

if __name__ == "__main__":
    raise SystemExit(cli.main(sys.argv[1:]))
