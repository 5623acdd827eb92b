"""Names and limits shared by the Redis adapter's modules."""

LOGICAL_ARTIFACT = "keys.svredis"
RDB_ARTIFACT = "dump.rdb"
BATCH_KEYS = 256  # keys per SCAN call and per MULTI/EXEC (memory: a batch of values)
CONNECT_TIMEOUT = 5.0
IO_TIMEOUT = 300.0  # a DUMP or RESTORE of a very large key can take a while
READY_TIMEOUT = 600.0  # how long a throwaway redis-server may take to load an RDB
INSTALL_HINT = ("install the Redis tools: apt-get install redis-tools redis-server (Debian, "
                "Ubuntu), or set redis_bin_dir to the folder that holds them")
