package tactful.kstreams;

import java.nio.file.Path;
import java.util.HashMap;
import java.util.Map;

/**
 * The peer's command line.
 * <pre>
 * java -jar tactful-kstreams.jar run --bootstrap HOST:PORT --application-id ID --state-dir DIR \
 *     --browse T --purchase T --location T --consent T --profiles T --dead-letters T \
 *     [--commit-interval-ms 1000] [--max-task-idle-ms 0] [--metrics-port 19465]
 * java -jar tactful-kstreams.jar profiles --bootstrap HOST:PORT --topic T
 * </pre>
 */
public final class Main {
    private Main() {}

    public static void main(String[] args) throws Exception {
        if (args.length == 0) {
            usage();
        }
        Map<String, String> options = new HashMap<>();
        for (int i = 1; i < args.length; i += 2) {
            if (!args[i].startsWith("--") || i + 1 >= args.length) {
                usage();
            }
            options.put(args[i].substring(2), args[i + 1]);
        }
        switch (args[0]) {
            case "run" -> Peer.run(
                    new Peer.Topics(required(options, "browse"), required(options, "purchase"),
                            required(options, "location"), required(options, "consent"),
                            required(options, "profiles"), required(options, "dead-letters")),
                    required(options, "bootstrap"), required(options, "application-id"),
                    Path.of(required(options, "state-dir")),
                    Long.parseLong(options.getOrDefault("commit-interval-ms", "1000")),
                    Long.parseLong(options.getOrDefault("max-task-idle-ms", "0")),
                    Integer.parseInt(options.getOrDefault("metrics-port", "19465")));
            case "profiles" -> ProfileDump.main(required(options, "bootstrap"), required(options, "topic"));
            default -> usage();
        }
    }

    private static String required(Map<String, String> options, String name) {
        String value = options.get(name);
        if (value == null) {
            System.err.println("missing --" + name);
            usage();
        }
        return value;
    }

    private static void usage() {
        System.err.println("usage: run --bootstrap B --application-id ID --state-dir DIR --browse T --purchase T "
                + "--location T --consent T --profiles T --dead-letters T [--commit-interval-ms N] [--max-task-idle-ms N] [--metrics-port P]"
                + "\n       profiles --bootstrap B --topic T");
        System.exit(2);
    }
}
