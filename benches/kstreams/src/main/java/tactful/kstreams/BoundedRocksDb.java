package tactful.kstreams;

import java.util.Map;
import org.apache.kafka.streams.state.RocksDBConfigSetter;
import org.rocksdb.BlockBasedTableConfig;
import org.rocksdb.Cache;
import org.rocksdb.LRUCache;
import org.rocksdb.Options;
import org.rocksdb.WriteBufferManager;

/**
 * One memory budget for every RocksDB instance of the process (Kafka
 * Streams' documented bounded-memory setup): by default each store of each
 * task gets its own 50 MB block cache and three 16 MB memtables, i.e. several
 * hundred MB for the 2 stores × N partitions here. Memtables are charged to
 * the shared cache, index and filter blocks live in it too.
 */
public final class BoundedRocksDb implements RocksDBConfigSetter {
    /** Block cache shared by every store (memtables included). */
    private static final long TOTAL_OFF_HEAP_BYTES = 128L << 20;
    private static final long TOTAL_MEMTABLE_BYTES = 48L << 20;
    private static final long MEMTABLE_BYTES = 8L << 20;

    private static final Cache CACHE = new LRUCache(TOTAL_OFF_HEAP_BYTES, -1, false, 0.1);
    private static final WriteBufferManager WRITE_BUFFERS = new WriteBufferManager(TOTAL_MEMTABLE_BYTES, CACHE);

    @Override
    public void setConfig(String storeName, Options options, Map<String, Object> configs) {
        BlockBasedTableConfig table = (BlockBasedTableConfig) options.tableFormatConfig();
        table.setBlockCache(CACHE);
        table.setCacheIndexAndFilterBlocks(true);
        table.setPinTopLevelIndexAndFilter(true);
        options.setTableFormatConfig(table);
        options.setWriteBufferManager(WRITE_BUFFERS);
        options.setWriteBufferSize(MEMTABLE_BYTES);
        options.setMaxWriteBufferNumber(2);
    }

    @Override
    public void close(String storeName, Options options) {
        // The cache and write buffer manager are shared by every store: never closed per store.
    }
}
