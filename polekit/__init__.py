"""polekit: the edge toolkit for smart city poles and community devices.

The areas live in the top-level folders of the source tree and are mapped into this
package by pyproject.toml: ``polekit.protocols``, ``polekit.gateway``,
``polekit.firmware``, ``polekit.hil`` and ``polekit.boards``.
"""

__version__ = "0.1.0"
