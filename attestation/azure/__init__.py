"""Azure confidential VMs with a paravisor vTPM (``az-snp-vtpm``,
``az-tdx-vtpm``): the HCL report, evidence JSON, verifiers, attesters and
``coco-verify az-snp-vtpm|az-tdx-vtpm``."""

__all__: list[str] = []
