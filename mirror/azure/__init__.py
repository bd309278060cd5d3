"""Azure: Entra ID tokens (`identity`), ACR-only operations through the Azure SDKs (`acr_lock`).

The only package that imports Azure SDK libraries; nothing is imported here, so importing
`mirror.azure` costs nothing until a submodule is used.
"""
