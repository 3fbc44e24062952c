"""`flexforge emulator`: a local server speaking the FLUX.2 HTTP API, for tests, demos and CI.

config.py     the knobs (EmulatorConfig), from defaults, a YAML/JSON file and flags
validation.py what a submission body must look like (FastAPI-shaped 422 errors)
state.py      tasks, credits, fault dice and counters
signing.py    signed, expiring download URLs
app.py        the aiohttp routes and handlers (BFL and CometAPI flavours)
server.py     binding the socket(s), the start-up banner, serving until Ctrl-C
testing.py    running_emulator(): an emulator on a free port in a background thread, for tests
"""

from flexforge.emulator.config import EmulatorConfig

__all__ = ["EmulatorConfig"]
