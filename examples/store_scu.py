"""A modality's storage SCU that finds its archive through dicom-agent — the example a
vendor copies (PS3.15 H.1: the directory says where an AE is; the application asks).

    python examples/store_scu.py ARCHIVE
    python examples/store_scu.py --ca-file /etc/dicom-agent/site-ca.pem --file image.dcm ARCHIVE

1. wait until the agent reports `ready` (the device is on the network, the DICOM way);
2. the calling AE title is the device's own, from the agent's status (a title template's
   title is whatever the directory gave this device; --calling-aet overrides);
3. look the archive up through the agent: refuse an AE the directory says is not
   installed; say when the answer is stale (the directory away, the cache answering);
4. choose a connection: a TLS one when the archive offers it and a CA is given
   (--ca-file, and --cert/--key where the archive wants the device's certificate);
   plain only when the archive offers no TLS, or when --allow-plain says so;
5. C-ECHO, then C-STORE a dataset (a small generated CT image unless --file is given);
6. after an association failure, look the archive up again with refresh (H.1.6: a failed
   association is the first sign of stale configuration) and try once more.

Prints one JSON line: {"peer": "host:port", "tls": bool, "echo": status, "store": status,
...}; exit 0 when the store succeeded. Needs pynetdicom and pydicom (`pip install
dicom-agent-client pynetdicom pydicom`); dicom-agent-client is the agent's socket client
(`make client-wheel`), also importable as agent.client inside the agent's environment.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys

try:
    from dicom_agent_client import AgentClient, AgentError
except ImportError:  # inside the agent's own environment
    from agent.client import AgentClient, AgentError

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification


def small_ct() -> Dataset:
    """A 16x16 CT image with fresh UIDs: enough for any storage SCP."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "TEST^AGENT", "AGENT-0001", "CT"
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(16 * 16 * 2)
    return ds


class Refused(Exception):
    """The peer cannot be used as configured (not installed, no acceptable connection)."""


def choose(peer, ca_file: str | None, allow_plain: bool):
    """(connection, use TLS): a TLS connection when the peer offers one and a CA is
    given; a plain one only when the peer offers no TLS, or when allowed."""
    if not peer.installed:
        raise Refused(f"{peer.aet} is not installed (the directory says so)")
    usable = [c for c in peer.connections if c.installed and c.port is not None]
    tls = [c for c in usable if c.tls]
    plain = [c for c in usable if not c.tls]
    if tls and ca_file:
        return tls[0], True
    if plain and (not tls or allow_plain):
        return plain[0], False
    if tls:
        raise Refused(f"{peer.aet} accepts TLS only: give --ca-file (or --allow-plain "
                      "where a plain connection exists and the site allows it)")
    raise Refused(f"{peer.aet} has no installed connection that accepts associations")


def send(calling: str, called: str, host: str, port: int, ds: Dataset,
         tls: tuple[ssl.SSLContext, str] | None = None) -> dict:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(host, port, ae_title=called, tls_args=tls)
    if not assoc.is_established:
        raise ConnectionError(f"no association with {called} at {host}:{port}")
    try:
        echo = assoc.send_c_echo()
        store = assoc.send_c_store(ds)
        return {"echo": int(echo.Status) if echo else None,
                "store": int(store.Status) if store else None,
                "sop_instance_uid": str(ds.SOPInstanceUID)}
    finally:
        assoc.release()


def tls_context(ca_file: str, cert: str | None, key: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)  # the peer's name is checked
    if cert:
        context.load_cert_chain(cert, key)
    return context


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("archive", metavar="ARCHIVE_AET")
    p.add_argument("--calling-aet", help="default: the device's first AE title (status)")
    p.add_argument("--socket", default="/run/dicom-agent/status.sock")
    p.add_argument("--wait", type=float, default=120.0, metavar="S",
                   help="how long to wait for the agent's ready")
    p.add_argument("--file", help="a DICOM file to store instead of a generated image")
    p.add_argument("--ca-file", help="the CA the archive's TLS certificate chains to")
    p.add_argument("--cert", help="this device's certificate, where the archive asks")
    p.add_argument("--key", help="its private key")
    p.add_argument("--allow-plain", action="store_true",
                   help="use a plain connection even where the archive offers TLS")
    args = p.parse_args(argv)
    agent = AgentClient(args.socket)
    ds = dcmread(args.file) if args.file else small_ct()
    try:
        snap = agent.wait_ready(args.wait)
        titles = snap.get("directory", {}).get("ae_titles") or []
        calling = args.calling_aet or (titles[0] if titles else None)
        if calling is None:
            print(json.dumps({"error": "this device has no AE title yet (status: "
                                       f"{snap.get('degraded')})"}))
            return 1
        for refresh in (False, True):
            peer = agent.lookup(args.archive, refresh=refresh)
            if peer is None:
                print(json.dumps({"error": f"{args.archive}: not found"}))
                return 2
            if peer.stale:
                print(f"store_scu: {args.archive}: a stale answer ({peer.source}): the "
                      "directory could not be asked", file=sys.stderr)
            try:
                conn, use_tls = choose(peer, args.ca_file, args.allow_plain)
            except Refused as exc:
                print(json.dumps({"error": str(exc)}))
                return 2
            host = conn.addresses[0] if conn.addresses else conn.hostname
            tls = (tls_context(args.ca_file, args.cert, args.key), conn.hostname) \
                if use_tls else None
            try:
                result = send(calling, args.archive, host, conn.port, ds, tls)
            except ConnectionError as exc:
                if refresh:
                    print(json.dumps({"error": str(exc)}))
                    return 1
                continue  # H.1.6: ask again, freshly, then retry once
            print(json.dumps({"peer": f"{host}:{conn.port}", "tls": use_tls,
                              "calling": calling, "source": peer.source,
                              "stale": peer.stale, "refreshed": refresh, **result}))
            return 0 if result["store"] == 0 else 1
    except (AgentError, TimeoutError) as exc:
        print(json.dumps({"error": f"dicom-agent: {exc}"}))
        return 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
