package dev.seekwatch.engine;

import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;

import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.core.common.transport.TransportAddress;
import org.opensearch.env.Environment;
import org.opensearch.http.HttpServerTransport;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.plugins.Plugin;

/**
 * Runs a single-node OpenSearch 2.19 in this JVM, with its modules (HTTP, ingest processors,
 * analyzers, painless, mustache, mapper extras, reindex) loaded as classpath plugins.
 *
 * <pre>
 * java -Xms512m -Xmx1g -cp 'target/seekwatch-search-engine.jar:target/lib/*' \
 *      dev.seekwatch.engine.Launcher --home DIR [--data DIR] [--port N] [--cluster-name NAME]
 *      [--ready-file FILE] [-Ekey=value ...]
 * </pre>
 *
 * Prints one line {@code seekwatch-search-engine: listening on http://127.0.0.1:PORT} when
 * it answers HTTP, writes the same URL to --ready-file (atomically) if given, and closes the
 * node cleanly on SIGTERM / SIGINT (a shutdown hook), so the data directory stays usable.
 */
public final class Launcher {

    /** Plugin classes that must be on the classpath; a missing one is a fatal error. */
    static final String[] PLUGIN_CLASSES = {
        "org.opensearch.transport.Netty4Plugin",
        "org.opensearch.ingest.common.IngestCommonPlugin",
        "org.opensearch.analysis.common.CommonAnalysisPlugin",
        "org.opensearch.painless.PainlessPlugin",
        "org.opensearch.index.mapper.MapperExtrasPlugin",
        "org.opensearch.index.reindex.ReindexPlugin",
        "org.opensearch.script.mustache.MustachePlugin",  // {{templates}} in ingest processors
    };

    /** Node subclass whose only job is to expose the protected classpath-plugin constructor. */
    static final class EmbeddedNode extends Node {
        EmbeddedNode(Environment env, Collection<Class<? extends Plugin>> plugins) {
            super(env, plugins, true);
        }
    }

    private Launcher() {}

    static void usage(PrintStream out) {
        out.println("usage: Launcher --home DIR [--data DIR] [--port N] [--cluster-name NAME] "
            + "[--ready-file FILE] [-Ekey=value ...]");
    }

    @SuppressWarnings("unchecked")
    static List<Class<? extends Plugin>> loadPlugins() {
        List<Class<? extends Plugin>> out = new ArrayList<>();
        for (String name : PLUGIN_CLASSES) {
            try {
                out.add((Class<? extends Plugin>) Class.forName(name));
            } catch (ClassNotFoundException e) {
                throw new IllegalStateException("plugin class " + name + " is not on the classpath: "
                    + "rebuild with scripts/setup.d/30-search-engine.sh", e);
            }
        }
        return out;
    }

    public static void main(String[] args) throws Exception {
        Path home = null;
        Path data = null;
        Path readyFile = null;
        String port = "9200";
        String clusterName = "seekwatch";
        Settings.Builder extra = Settings.builder();
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            switch (a) {
                case "--home": home = Paths.get(args[++i]); break;
                case "--data": data = Paths.get(args[++i]); break;
                case "--port": port = args[++i]; break;
                case "--cluster-name": clusterName = args[++i]; break;
                case "--ready-file": readyFile = Paths.get(args[++i]); break;
                case "-h": case "--help": usage(System.out); return;
                default:
                    if (a.startsWith("-E") && a.contains("=")) {
                        String kv = a.substring(2);
                        int eq = kv.indexOf('=');
                        extra.put(kv.substring(0, eq), kv.substring(eq + 1));
                    } else {
                        System.err.println("seekwatch-search-engine: unknown argument " + a);
                        usage(System.err);
                        System.exit(2);
                    }
            }
        }
        if (home == null) {
            System.err.println("seekwatch-search-engine: --home is required");
            usage(System.err);
            System.exit(2);
        }
        home = home.toAbsolutePath();
        if (data == null) {
            data = home.resolve("data");
        }
        data = data.toAbsolutePath();
        Path config = home.resolve("config");
        for (Path p : new Path[] {home, data, config, home.resolve("modules"), home.resolve("plugins"),
                                  home.resolve("logs")}) {
            Files.createDirectories(p);
        }

        Settings settings = Settings.builder()
            .put("path.home", home.toString())
            .put("path.data", data.toString())
            .put("path.logs", home.resolve("logs").toString())
            .put("cluster.name", clusterName)
            .put("node.name", "node-1")
            .put("network.host", "127.0.0.1")
            .put("http.port", port)
            .put("transport.port", "0")  // any free port: single-node, nobody connects to it
            .put("discovery.type", "single-node")
            .put("node.processors", Math.min(2, Runtime.getRuntime().availableProcessors()))
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .put("indices.breaker.total.use_real_memory", false)
            .put("action.auto_create_index", true)
            .put(extra.build())
            .build();

        LogConfigurator.registerErrorListener();
        LogConfigurator.setNodeName("node-1");
        LogConfigurator.configureWithoutConfig(settings);

        Environment env = InternalSettingsPreparer.prepareEnvironment(settings, Map.of(), config, () -> "node-1");
        Node node = new EmbeddedNode(env, loadPlugins());
        CountDownLatch closed = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
                node.awaitClose(30, java.util.concurrent.TimeUnit.SECONDS);
            } catch (Exception e) {
                System.err.println("seekwatch-search-engine: error while closing: " + e);
            } finally {
                closed.countDown();
            }
        }, "seekwatch-shutdown"));
        node.start();

        TransportAddress bound = node.injector().getInstance(HttpServerTransport.class)
            .boundAddress().publishAddress();
        String url = "http://" + bound.getAddress() + ":" + bound.getPort();
        if (readyFile != null) {
            Path tmp = readyFile.resolveSibling(readyFile.getFileName() + ".tmp");
            Files.write(tmp, (url + "\n").getBytes(StandardCharsets.UTF_8));
            Files.move(tmp, readyFile, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        }
        System.out.println("seekwatch-search-engine: listening on " + url);
        System.out.flush();
        closed.await();
    }
}
