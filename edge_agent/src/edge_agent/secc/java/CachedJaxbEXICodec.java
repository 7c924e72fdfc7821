/*
 * Josev's EXI codec (com.siemens.ct.exi.main.cmd.EXICodec, in Josev's EXICodec.jar) with its JAXB contexts kept.
 *
 * Why: AbstractEXICodec.setJAXBContext(schema) calls setJaxbContext(classes) on every encode and decode, and that
 * builds a new JAXBContext (plus a marshaller and an unmarshaller) for the message classes of the schema: 40-200 ms
 * per ISO 15118-20 message on a 2-CPU machine, most of the 250 ms the car allows for a response. The context for
 * a given set of classes is always the same, so it is built once and reused; everything else (the grammars, the
 * JSON <-> XML <-> EXI path, the error texts) is Josev's own code. EXICodec is final, so this class repeats its
 * small encode/decode wrappers (namespace -> schema, errors reported through get_last_*_error) around them.
 *
 * Built into edge_agent/secc/java/CachedJaxbEXICodec.class by `make exi-codec` (javac --release 11 against
 * Josev's jar); the agent falls back to Josev's EXICodec when the class cannot be loaded.
 */
package edge_agent.secc;

import com.siemens.ct.exi.main.cmd.AbstractEXICodec;
import com.siemens.ct.exi.main.cmd.BuiltInSchema;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import javax.xml.bind.Marshaller;
import javax.xml.bind.Unmarshaller;

public final class CachedJaxbEXICodec extends AbstractEXICodec {
    private static final Map<String, BuiltInSchema> SCHEMAS = new HashMap<>();

    static {
        SCHEMAS.put("urn:iso:15118:2:2010:AppProtocol", BuiltInSchema.AppProtocol);
        SCHEMAS.put("urn:iso:15118:2:2013:MsgDef", BuiltInSchema.ISO15118_2);
        SCHEMAS.put("urn:iso:std:iso:15118:-20:CommonMessages", BuiltInSchema.ISO15118_20_V2G_CI_CommonMessages);
        SCHEMAS.put("urn:iso:std:iso:15118:-20:AC", BuiltInSchema.ISO15118_20_V2G_CI_AC);
        SCHEMAS.put("urn:iso:std:iso:15118:-20:DC", BuiltInSchema.ISO15118_20_V2G_CI_DC);
        SCHEMAS.put("urn:iso:std:iso:15118:-20:WPT", BuiltInSchema.ISO15118_20_V2G_CI_WPT);
        SCHEMAS.put("urn:iso:std:iso:15118:-20:ACDP", BuiltInSchema.ISO15118_20_V2G_CI_ACDP);
        SCHEMAS.put("http://www.w3.org/2000/09/xmldsig#", BuiltInSchema.XSDCore);
        SCHEMAS.put("urn:din:70121:2012:MsgDef", BuiltInSchema.DINSpec_70121);
    }

    @SuppressWarnings("rawtypes")
    private Map<List<Class>, Object[]> contexts;  // classes -> {marshaller, unmarshaller}

    @Override
    @SuppressWarnings("rawtypes")
    protected synchronized void setJaxbContext(Class... classes) {
        if (contexts == null) {
            contexts = new HashMap<>();  // the superclass constructor calls this before our fields are set
        }
        List<Class> key = Arrays.asList(classes);
        Object[] kept = contexts.get(key);
        if (kept == null) {
            super.setJaxbContext(classes);
            contexts.put(key, new Object[] {getMarshaller(), getUnmarshaller()});
        } else {
            setMarshaller((Marshaller) kept[0]);
            setUnmarshaller((Unmarshaller) kept[1]);
        }
    }

    public byte[] encode(String message, String namespace) {
        resetLastEncodingError();
        try {
            return encode_json(message, SCHEMAS.get(namespace));
        } catch (com.fasterxml.jackson.databind.JsonMappingException e) {
            setLastEncodingError("JSON Mapping Error" + e.getMessage());
        } catch (ClassNotFoundException e) {
            String name = e.getMessage();
            setLastEncodingError("Unknown Message Type: " + name.substring(name.lastIndexOf('.') + 1));
        } catch (com.fasterxml.jackson.core.JsonProcessingException e) {
            setLastEncodingError("JSON Processing Error" + e.getMessage());
        } catch (Exception e) {
            setLastEncodingError("Unknown error: " + e);
        }
        return null;
    }

    public String decode(byte[] stream, String namespace) {
        return decode_exi(stream, SCHEMAS.get(namespace));
    }

    public String get_last_encoding_error() {
        return lastEncodingError;
    }

    public String get_last_decoding_error() {
        return lastDecodingError;
    }

    @Override
    public float get_version() {
        return 1.55f;  // Josev's EXICodec's
    }
}
