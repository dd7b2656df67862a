"""The chunked, deterministically sealed manifest of a revision.

See ``chunks`` (writer, reader, name index), ``records`` (the record and
chunk format, the sort order) and ``sealing`` (AES-SIV, what it reveals).
"""

from barterbackup.content.manifest.chunks import (
    CHUNK_AVERAGE_RECORDS,
    ManifestIndex,
    ManifestReader,
    ManifestSummary,
    ManifestWriter,
)
from barterbackup.content.manifest.records import (
    MAX_CHUNK_PLAINTEXT,
    FileRecord,
    InvalidManifest,
    ManifestError,
    PlacedRecord,
    decode_chunk,
    sort_key,
)
from barterbackup.content.manifest.sealing import ChunkSealer, ManifestKeys

__all__ = [
    "CHUNK_AVERAGE_RECORDS",
    "MAX_CHUNK_PLAINTEXT",
    "ChunkSealer",
    "FileRecord",
    "InvalidManifest",
    "ManifestError",
    "ManifestIndex",
    "ManifestKeys",
    "ManifestReader",
    "ManifestSummary",
    "ManifestWriter",
    "PlacedRecord",
    "decode_chunk",
    "sort_key",
]
