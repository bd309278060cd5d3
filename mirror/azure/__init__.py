"""Azure: Entra ID tokens (`identity`), ACR-only operations through the Azure SDKs (`acr_lock`),
Azure Policy assignments as a Policy (`assignments`, pure) and read from ARM (`policy`).

The only package that imports Azure SDK libraries; nothing is imported here, so importing
`mirror.azure` costs nothing until a submodule is used.
"""
