package org.elasticsearch.node;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CountDownLatch;

import org.elasticsearch.common.logging.LogConfigurator;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.http.HttpServerTransport;
import org.elasticsearch.plugins.ClasspathPluginsService;
import org.elasticsearch.plugins.PluginsLoader;
import org.elasticsearch.plugins.PluginsService;
import org.elasticsearch.transport.netty4.Netty4Plugin;

/**
 * Elasticsearch 8.19 core-only, single node, in this JVM; same command line as the OpenSearch
 * launcher (dev.seekwatch.engine.Launcher): --home DIR [--data DIR] [--port N] [--ready-file F].
 * The node is assembled through NodeConstruction.prepareConstruction (package-private, hence
 * this package) with a PluginsService that holds only the netty4 HTTP transport.
 */
public final class CoreOnlyLauncher extends Node {

    CoreOnlyLauncher(Environment env) {
        super(NodeConstruction.prepareConstruction(env,
            PluginsLoader.createPluginsLoader(Set.of(), Set.of(), Map.of(), false),
            new NodeServiceProvider() {
                @Override
                PluginsService newPluginService(Environment e, PluginsLoader loader) {
                    return new ClasspathPluginsService(e.settings(), e.configDir(), List.of(Netty4Plugin.class));
                }
            }, true));
    }

    public static void main(String[] args) throws Exception {
        Path home = null, data = null, ready = null;
        String port = "9200";
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--home": home = Paths.get(args[++i]).toAbsolutePath(); break;
                case "--data": data = Paths.get(args[++i]).toAbsolutePath(); break;
                case "--port": port = args[++i]; break;
                case "--ready-file": ready = Paths.get(args[++i]); break;
                default:
                    if (args[i].startsWith("-E")) break;  // accepted and ignored: core-only has few settings
                    System.err.println("unknown argument " + args[i]);
                    System.exit(2);
            }
        }
        if (home == null) { System.err.println("--home is required"); System.exit(2); }
        if (data == null) data = home.resolve("data");
        for (Path p : new Path[] {home.resolve("config"), data, home.resolve("plugins"), home.resolve("modules"), home.resolve("logs")}) {
            Files.createDirectories(p);
        }
        Settings settings = Settings.builder()
            .put("path.home", home.toString()).put("path.data", data.toString())
            .put("path.logs", home.resolve("logs").toString())
            .put("cluster.name", "seekwatch-es-core").put("node.name", "node-1")
            .put("network.host", "127.0.0.1").put("http.port", port).put("transport.port", "0")
            .put("discovery.type", "single-node")
            .put("node.processors", Math.min(2, Runtime.getRuntime().availableProcessors()))
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .put("indices.breaker.total.use_real_memory", false)
            .build();
        LogConfigurator.registerErrorListener();
        LogConfigurator.setNodeName("node-1");
        LogConfigurator.configureESLogging();
        LogConfigurator.configureWithoutConfig(settings);
        Environment env = InternalSettingsPreparer.prepareEnvironment(settings, Map.of(), home.resolve("config"), () -> "node-1");
        Node node = new CoreOnlyLauncher(env);
        CountDownLatch closed = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
            } catch (Exception e) {
                System.err.println("error while closing: " + e);
            } finally {
                closed.countDown();
            }
        }, "seekwatch-shutdown"));
        node.start();
        var addr = node.injector().getInstance(HttpServerTransport.class).boundAddress().publishAddress();
        String url = "http://" + addr.getAddress() + ":" + addr.getPort();
        if (ready != null) {
            Path tmp = ready.resolveSibling(ready.getFileName() + ".tmp");
            Files.write(tmp, (url + "\n").getBytes(StandardCharsets.UTF_8));
            Files.move(tmp, ready, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        }
        System.out.println("seekwatch-es-core: listening on " + url);
        System.out.flush();
        closed.await();
    }
}
