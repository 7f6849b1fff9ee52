"""Run the intake alone until SIGTERM: `python -m edge_forwarder.intake SETTINGS.json`."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from edge_forwarder.intake.scp import Intake
from edge_forwarder.intake.settings import IntakeSettings


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m edge_forwarder.intake SETTINGS.json", file=sys.stderr)
        return 2
    settings = IntakeSettings.model_validate_json(Path(args[0]).read_text(encoding="utf-8"))
    intake = Intake(settings)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    intake.start()
    # The one line a supervisor (or a test) waits for: the port actually bound.
    print(f"READY {intake.port}", flush=True)
    stopping.wait()
    intake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
