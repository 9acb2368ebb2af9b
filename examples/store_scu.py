"""A modality's storage SCU that finds its archive through dicom-agent — the example a
vendor copies (PS3.15 H.1: the directory says where an AE is; the application asks).

    python examples/store_scu.py --calling-aet CT01_SCU ARCHIVE_SCP
    python examples/store_scu.py --socket /run/dicom-agent/status.sock --file image.dcm ARCHIVE

1. wait until the agent reports `ready` (the device is on the network, the DICOM way);
2. look the archive up through the agent: host, port and the addresses the agent
   resolved with the site DNS (F.1.1), so the application needs no resolver of its own;
3. C-ECHO, then C-STORE a dataset (a small generated CT image unless --file is given);
4. after an association failure, look the archive up again with refresh (H.1.6: a failed
   association is the first sign of stale configuration) and try once more.

Prints one JSON line: {"peer": "host:port", "echo": status, "store": status, ...}; exit 0
when the store succeeded. Needs pynetdicom and pydicom (`pip install
dicom-agent-client pynetdicom pydicom`); dicom-agent-client is the agent's socket client
(`make client-wheel`), also importable as agent.client inside the agent's environment.
"""

from __future__ import annotations

import argparse
import json
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


def send(calling: str, called: str, host: str, port: int, ds: Dataset) -> dict:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(host, port, ae_title=called)
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("archive", metavar="ARCHIVE_AET")
    p.add_argument("--calling-aet", default="STORE_SCU")
    p.add_argument("--socket", default="/run/dicom-agent/status.sock")
    p.add_argument("--wait", type=float, default=120.0, metavar="S",
                   help="how long to wait for the agent's ready")
    p.add_argument("--file", help="a DICOM file to store instead of a generated image")
    args = p.parse_args(argv)
    agent = AgentClient(args.socket)
    ds = dcmread(args.file) if args.file else small_ct()
    try:
        agent.wait_ready(args.wait)
        for refresh in (False, True):
            peer = agent.lookup(args.archive, refresh=refresh)
            if peer is None or peer.port is None:
                print(json.dumps({"error": f"{args.archive}: not found, or no port"}))
                return 2
            host = peer.addresses[0] if peer.addresses else peer.host
            try:
                result = send(args.calling_aet, args.archive, host, peer.port, ds)
            except ConnectionError as exc:
                if refresh:
                    print(json.dumps({"error": str(exc)}))
                    return 1
                continue  # H.1.6: ask again, freshly, then retry once
            print(json.dumps({"peer": f"{host}:{peer.port}", "source": peer.source,
                              "refreshed": refresh, **result}))
            return 0 if result["store"] == 0 else 1
    except (AgentError, TimeoutError) as exc:
        print(json.dumps({"error": f"dicom-agent: {exc}"}))
        return 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
