// Golden Avro fingerprints from the reference implementation, Java Avro.
//
// For each .avsc file named on the command line, prints one line:
//
//   <path as given> 0x<16 lowercase hex digits>\t<Parsing Canonical Form>
//
// where the number is SchemaNormalization.parsingFingerprint64(schema), the
// CRC-64-AVRO (Rabin) fingerprint that Avro's single-object encoding puts
// after its C3 01 marker (little-endian there), printed as an unsigned 64-bit
// value. Other implementations (the Rust crate, fastavro) are checked against
// these numbers.
//
// A single-file program for Java's source-launch mode; scripts/avro-fingerprints.sh
// fetches Avro and runs it:
//
//   java -cp '<avro jars>/*' tests/interop/Fingerprints.java schemas/*.avsc
import java.io.File;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;

import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;

public class Fingerprints {
    public static void main(String[] args) throws Exception {
        if (args.length == 0) {
            System.err.println("usage: java Fingerprints.java FILE.avsc...");
            System.exit(2);
        }
        PrintStream out = new PrintStream(System.out, false, StandardCharsets.UTF_8);
        int failed = 0;
        for (String path : args) {
            Schema schema;
            try {
                // A fresh parser per file: the contract's schemas each define
                // their own copy of shared named types (EventConsent, ...).
                schema = new Schema.Parser().parse(new File(path));
            } catch (Exception e) {
                System.err.println("Fingerprints: " + path + ": " + e.getMessage());
                failed++;
                continue;
            }
            long fp = SchemaNormalization.parsingFingerprint64(schema);
            String hex = Long.toUnsignedString(fp, 16);
            String padded = "0".repeat(16 - hex.length()) + hex;
            out.print(path + " 0x" + padded + "\t" + SchemaNormalization.toParsingForm(schema) + "\n");
        }
        out.flush();
        System.exit(failed == 0 ? 0 : 1);
    }
}
