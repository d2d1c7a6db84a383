package org.elasticsearch.plugins;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.Set;

import org.elasticsearch.common.settings.Settings;

/**
 * A PluginsService whose plugins are classes already on the classpath, with no plugin or
 * module directories. It lives in Elasticsearch's package because the pieces it needs
 * (LoadedPlugin, loadPlugin, loadExtensions) are package-private there.
 */
public class ClasspathPluginsService extends PluginsService {
    private final List<LoadedPlugin> classpath;

    public ClasspathPluginsService(Settings settings, Path configPath, List<Class<? extends Plugin>> classes) {
        super(settings, configPath, PluginsLoader.createPluginsLoader(Set.of(), Set.of(), Map.of(), false));
        List<LoadedPlugin> out = new ArrayList<>();
        for (Class<? extends Plugin> c : classes) {
            PluginDescriptor d = new PluginDescriptor(c.getName(), "classpath plugin", "NA", "8.19.0", "17",
                c.getName(), null, Collections.emptyList(), false, false, false, false);
            out.add(new LoadedPlugin(d, loadPlugin(c, settings, configPath), c.getClassLoader()));
        }
        loadExtensions(out);
        this.classpath = List.copyOf(out);
    }

    @Override
    protected List<LoadedPlugin> plugins() {
        return classpath;
    }
}
