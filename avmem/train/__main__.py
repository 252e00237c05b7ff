"""``python -m avmem.train CONFIG.yaml`` (also under ``accelerate launch -m avmem.train`` and ``torchrun -m``)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from ..cli import app

    return app(["train", *(sys.argv[1:] if argv is None else argv)], standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main())
