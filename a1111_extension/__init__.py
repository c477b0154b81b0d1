"""Webui (A1111 / reForge / Forge) glue of the v-pred / ZTSNR toolkit.

Importing this package never imports a host module: the ``logic_*`` modules are host-free and unit-tested in CI;
the host-touching modules (``script``, ``a1111_*``, ``patcher``, ``options``, ``ui``, ``xyz``, ``yaml_auto``) import
``modules.*`` lazily or at their own import, and are only imported by ``scripts/vpred_ztsnr.py`` inside a webui.
"""
