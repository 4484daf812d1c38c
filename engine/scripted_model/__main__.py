"""``python -m engine.scripted_model --port 0 --script FILE.json``: serve until SIGTERM or SIGINT.

The first line on stdout is the OpenAI base URL (``http://127.0.0.1:PORT/v1``).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from engine.scripted_model.server import ScriptedModel
from engine.scripted_model.steps import Script


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.scripted_model", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (0 = a free one)")
    parser.add_argument("--script", help="JSON script file (see engine.scripted_model.Script)")
    parser.add_argument("--model", default="scripted-1", help="model id reported by /v1/models")
    args = parser.parse_args(argv)
    script = Script.from_file(args.script) if args.script else None
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    model = ScriptedModel(script, host=args.host, port=args.port, model_id=args.model).start()
    try:
        print(model.base_url, flush=True)
        while not done.wait(0.5):
            pass
    finally:
        model.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
