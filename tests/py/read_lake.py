"""Read a parkade Parquet lake with pyarrow, independently of parkade's own code.

Usage: read_lake.py PATH   (PATH: a generation's `events` folder or the `features`
folder, local or s3://bucket/key;
for s3 the endpoint and keys come from PARKADE_TEST_S3_ENDPOINT and AWS_* variables)
Prints JSON: the row count, the schema, the partition values, and every row's main
fields sorted by offset.
"""
import json
import os
import sys

import pyarrow.dataset as ds

path = sys.argv[1]
filesystem = None
if path.startswith("s3://"):
    from pyarrow import fs

    endpoint = os.environ["PARKADE_TEST_S3_ENDPOINT"]
    scheme, _, host = endpoint.partition("://")
    filesystem = fs.S3FileSystem(
        endpoint_override=host,
        scheme=scheme,
        access_key=os.environ["AWS_ACCESS_KEY_ID"],
        secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region=os.environ.get("AWS_REGION", "us-east-1"),
    )
    path = path[len("s3://"):]
dataset = ds.dataset(path, format="parquet", partitioning="hive", filesystem=filesystem)
table = dataset.to_table()
cols = table.to_pydict()
rows = []
if "offset" in cols:
    table = table.sort_by("offset")
    cols = table.to_pydict()
    for i in range(table.num_rows):
        rows.append(
            {
                "offset": cols["offset"][i],
                "event_id": cols["event_id"][i],
                "lot_id": cols["lot_id"][i],
                "event_type": cols["event_type"][i],
                "occupancy": cols["occupancy"][i],
                "capacity": cols["capacity"][i],
                "count": cols["count"][i],
                "name": cols["name"][i],
                "occurred_at": cols["occurred_at"][i].isoformat(),
                "date": str(cols["date"][i]),
            }
        )
else:
    # A features folder: every column, rows by lot and bucket.
    table = table.sort_by([("lot_id", "ascending"), ("bucket_start", "ascending")])
    cols = table.to_pydict()
    for i in range(table.num_rows):
        row = {k: cols[k][i] for k in cols}
        row["bucket_start"] = row["bucket_start"].isoformat()
        row["date"] = str(row["date"])
        rows.append(row)
print(
    json.dumps(
        {
            "rows": table.num_rows,
            "files": len(dataset.files),
            "schema": [[f.name, str(f.type)] for f in table.schema],
            "records": rows,
        }
    )
)
