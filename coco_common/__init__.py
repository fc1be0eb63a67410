"""Small helpers shared by every package (no imports from the others):
strict JSON for security-relevant input (:mod:`coco_common.strict_json`)."""
