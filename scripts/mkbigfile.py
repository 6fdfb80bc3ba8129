#!/usr/bin/env python3
"""A one-layer OCI image layout holding /big.bin (SIZE_MIB of seeded random
bytes), for read benchmarks. Usage: mkbigfile.py OUT_LAYOUT TAG SIZE_MIB"""
import gzip
import hashlib
import io
import json
import os
import random
import sys
import tarfile

out, tag, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(os.path.join(out, "blobs", "sha256"), exist_ok=True)


def put(data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(out, "blobs", "sha256", d), "wb") as f:
        f.write(data)
    return "sha256:" + d, len(data)


rng = random.Random(42)
payload = rng.randbytes(mib << 20)
raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
    ti = tarfile.TarInfo("big.bin")
    ti.size, ti.mode, ti.mtime = len(payload), 0o644, 0
    t.addfile(ti, io.BytesIO(payload))
tar = raw.getvalue()
diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
layer, lsize = put(gzip.compress(tar, compresslevel=1, mtime=0))
cfg = {"architecture": "amd64", "os": "linux", "config": {},
       "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
cdig, csize = put(json.dumps(cfg).encode())
man = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdig, "size": csize},
       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": lsize}]}
mdig, msize = put(json.dumps(man).encode())
with open(os.path.join(out, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": [{"mediaType": man["mediaType"], "digest": mdig, "size": msize,
               "annotations": {"org.opencontainers.image.ref.name": tag}}]}, f)
