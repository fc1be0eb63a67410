"""The edge kit shared by every package (it imports none of them).

- :mod:`coco_common.strict_json`: strict JSON with a size limit, errors in the caller's class;
- :mod:`coco_common.fields`: typed reads out of an untrusted table, unknown keys named;
- :mod:`coco_common.files`: bounded reads of untrusted files, atomic writes;
- :mod:`coco_common.b64`: strict base64 and base64url;
- :mod:`coco_common.http`: the one factory for outbound HTTP clients;
- :mod:`coco_common.http_body`: bounded reading of HTTP bodies, after decoding;
- :mod:`coco_common.cli` and :mod:`coco_common.logfmt`: one voice for the commands and daemons.
"""

__version__ = "0.1.0"
