"""The painting app: a Gradio page over one shared engine, split by job.

- ``state``: one tab's painting (``TabState``) and the pure operations on its layers (no Gradio);
- ``outputs``: the ``@outputs`` declarations that tie each handler to the components it may update;
- ``views``, ``generate``, ``layers``, ``palette``, ``inspector``, ``factors``, ``sessions``: the handler groups,
  composed into ``PaintApp`` (``handlers``), which tests call as plain Python;
- ``layout`` and ``wiring``: the components and the events wired to the handlers.
"""

from __future__ import annotations

from .handlers import PaintApp
from .layout import CSS, LAUNCH_OPTIONS, build_app, serve
from .outputs import Notes, UndeclaredOutput, outputs
from .state import TabState, new_tab_state

__all__ = ["CSS", "LAUNCH_OPTIONS", "Notes", "PaintApp", "TabState", "UndeclaredOutput", "build_app",
           "new_tab_state", "outputs", "serve"]
