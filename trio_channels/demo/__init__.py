"""The built-in demo served by ``python -m trio_channels run`` with no routing."""
