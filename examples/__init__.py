"""The tutorial's folder (docs/tutorial.rst), finished: one package per step.

Run a step from this folder, as the tutorial does from yours:
``cd examples && python -m trio_channels run echo.routing:channel_routing``.
"""
