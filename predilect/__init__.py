"""Predilect: retinal fundus screening with predilection-site attention.

The wheel holds every layer under this one namespace: ``predilect.contract``,
``predilect.catalog`` and ``predilect.preprocess`` (the shared core), ``predilect.training``,
``predilect.build``, ``predilect.serving`` and ``predilect.client``. In a checkout the layers
sit at the top level and ``predilect/<layer>`` links to them, so there is one copy of each.
"""

__version__ = "0.1.0"
