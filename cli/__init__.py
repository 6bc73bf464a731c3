"""The top layer: the ``retail-etl`` command and what only it installs (automations).

It may import every layer below (flows, tasks, blocks, ``retail_etl``); nothing imports it.
"""
