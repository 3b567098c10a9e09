//! Oracle's published signing vectors (docs "Request Signatures", oci-go-sdk
//! `common/http_signer_test.go`) and two derived ones, byte for byte.

use super::*;

/// The published key file: the PKCS#1 private key followed by its public key, so this also
/// checks that text after the END line is ignored.
const KEY: &str = include_str!("../../tests/data/oracle-vector-key.pem");
const TENANCY: &str =
    "ocid1.tenancy.oc1..aaaaaaaaba3pv6wkcr4jqae5f15p2b2m2yt2j6rx32uzr4h25vqstifsfdsq";
const USER: &str = "ocid1.user.oc1..aaaaaaaat5nvwcna5j6aqzjcaty5eqbb6qt2jvpkanghtgdaqedqw3rynjq";
const FINGERPRINT: &str = "20:3b:97:13:55:1c:5b:0d:d3:37:d8:50:4e:c5:3a:34";
const DATE: &str = "Thu, 05 Jan 2014 21:31:40 GMT";

fn signer() -> Signer {
    let key = PrivateKey::from_pem(KEY, None).unwrap();
    Signer::new(format!("{TENANCY}/{USER}/{FINGERPRINT}"), key)
}

fn dated() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::DATE, HeaderValue::from_static(DATE));
    headers
}

fn signature_of(authorization: &HeaderValue) -> String {
    let value = authorization.to_str().unwrap();
    let start = value.find("signature=\"").unwrap() + "signature=\"".len();
    value[start..value.len() - 1].to_string()
}

/// Signs a body-less request and returns the signature.
fn sign_get(method: Method, url: &str) -> String {
    let mut headers = dated();
    signer()
        .sign(
            &method,
            &Url::parse(url).unwrap(),
            &mut headers,
            Payload::Unsigned,
        )
        .unwrap();
    signature_of(&headers[header::AUTHORIZATION])
}

const V1_URL: &str = "https://iaas.us-phoenix-1.oraclecloud.com/20160918/instances?availabilityDomain=Pjwf%3A%20PHX-AD-1&compartmentId=ocid1.compartment.oc1..aaaaaaaam3we6vgnherjq5q2idnccdflvjsnog7mlr6rtdb25gilchfeyjxa&displayName=TeamXInstances&volumeId=ocid1.volume.oc1.phx.abyhqljrgvttnlx73nmrwfaux7kcvzfs3s66izvxf2h4lgvyndsdsnoiwr5q";
const V1_SIGNATURE: &str = "GBas7grhyrhSKHP6AVIj/h5/Vp8bd/peM79H9Wv8kjoaCivujVXlpbKLjMPeDUhxkFIWtTtLBj3sUzaFj34XE6YZAHc9r2DmE4pMwOAy/kiITcZxa1oHPOeRheC0jP2dqbTll8fmTZVwKZOKHYPtrLJIJQHJjNvxFWeHQjMaR7M=";

#[test]
fn v1_get_matches_the_published_signing_string_and_header() {
    let url = Url::parse(V1_URL).unwrap();
    let mut headers = dated();
    signer()
        .sign(&Method::GET, &url, &mut headers, Payload::Unsigned)
        .unwrap();
    assert_eq!(
        signing_string(&Method::GET, &url, &headers, &GENERIC).unwrap(),
        format!(
            "date: {DATE}\n(request-target): get {}\nhost: iaas.us-phoenix-1.oraclecloud.com",
            &V1_URL["https://iaas.us-phoenix-1.oraclecloud.com".len()..]
        )
    );
    assert_eq!(
        headers[header::AUTHORIZATION],
        format!(
            r#"Signature version="1",headers="date (request-target) host",keyId="{TENANCY}/{USER}/{FINGERPRINT}",algorithm="rsa-sha256",signature="{V1_SIGNATURE}""#
        )
    );
    assert_eq!(headers[header::HOST], "iaas.us-phoenix-1.oraclecloud.com");
}

#[test]
fn v2_post_signs_the_body_headers() {
    let body = concat!(
        "{\n",
        r#"    "compartmentId": "ocid1.compartment.oc1..aaaaaaaam3we6vgnherjq5q2idnccdflvjsnog7mlr6rtdb25gilchfeyjxa","#,
        "\n",
        r#"    "instanceId": "ocid1.instance.oc1.phx.abuw4ljrlsfiqw6vzzxb43vyypt4pkodawglp3wqxjqofakrwvou52gb6s5a","#,
        "\n",
        r#"    "volumeId": "ocid1.volume.oc1.phx.abyhqljrgvttnlx73nmrwfaux7kcvzfs3s66izvxf2h4lgvyndsdsnoiwr5q""#,
        "\n}"
    );
    assert_eq!(body.len(), 316);
    let url =
        Url::parse("https://iaas.us-phoenix-1.oraclecloud.com/20160918/volumeAttachments").unwrap();
    let mut headers = dated();
    signer()
        .sign(
            &Method::POST,
            &url,
            &mut headers,
            Payload::Signed(body.as_bytes()),
        )
        .unwrap();
    assert_eq!(headers[header::CONTENT_LENGTH], "316");
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(
        headers["x-content-sha256"],
        "V9Z20UJTvkvpJ50flBzKE32+6m2zJjweHpDMX/U4Uy0="
    );
    let authorization = headers[header::AUTHORIZATION].to_str().unwrap();
    assert!(
        authorization.contains(
            r#"headers="date (request-target) host content-length content-type x-content-sha256""#
        ),
        "{authorization}"
    );
    assert_eq!(
        signature_of(&headers[header::AUTHORIZATION]),
        "Mje8vIDPlwIHmD/cTDwRxE7HaAvBg16JnVcsuqaNRim23fFPgQfLoOOxae6WqKb1uPjYEl0qIdazWaBy/Ml8DRhqlocMwoSXv0fbukP8J5N80LCmzT/FFBvIvTB91XuXI3hYfP9Zt1l7S6ieVadHUfqBedWH0itrtPJBgKmrWso="
    );
}

#[test]
fn v3_put_object_signs_only_the_generic_headers() {
    assert_eq!(
        sign_get(
            Method::PUT,
            "https://objectstorage.us-ashburn-1.oraclecloud.com/n/mynamespace/b/kiln-templates/o/tpl-abc/rootfs.ext4"
        ),
        "FywIN+kPmELPF0lMSQQBaVenpI8BL2b9QFS9Y8pqDdf48qgbrpiiC6vBiGFYON+t/zV0L7D4yBKZIjSUQv7NndqO0ffgigHRFXDi/USCRqKdrMPJyppf2YCCehXLuyZRcYKmnsxDpjBtIhIf+36focBcZuoAzWvJ5FSVxxKmryE="
    );
}

#[test]
fn v4_get_with_an_encoded_query() {
    assert_eq!(
        sign_get(
            Method::GET,
            "https://artifacts.us-ashburn-1.oci.oraclecloud.com/20160918/container/images?compartmentId=ocid1.compartment.oc1..aaaaaaaam3we6vgnherjq5q2idnccdflvjsnog7mlr6rtdb25gilchfeyjxa&repositoryName=kiln%2Ftemplates"
        ),
        "XDdT6jU6EgoBl8m4hvebgCqSReuyg7zRzKjBr6nY/grRGAOcyPKirSxGF8PiWyDUQ2PNrGCIXb2T8CrF8ZLXynRWGkhykZw6iceQIf+3s5CC2zSmQtD/6CLTAAAZOY+Jtj1sxcTu3Z/mhavTLLHZOqYyfJ0Ra/mIyVJ0Y9LtZTs="
    );
}

#[test]
fn a_changed_request_changes_the_signature() {
    // Guards against a signer that ignores its input.
    let other = V1_URL.replace("TeamXInstances", "TeamYInstances");
    assert_ne!(sign_get(Method::GET, &other), V1_SIGNATURE);
}

#[test]
fn the_key_fingerprint_is_the_md5_of_the_public_key() {
    let key = PrivateKey::from_pem(KEY, None).unwrap();
    assert_eq!(
        key.fingerprint().unwrap(),
        "73:61:a2:21:67:e0:df:be:7e:4b:93:1e:15:98:a5:b7"
    );
    assert_eq!(key.bits(), 1024);
}

#[test]
fn x_date_replaces_date_and_a_port_is_part_of_host() {
    let url = Url::parse("http://localhost:7000/n/ns/b/bucket/o").unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("x-date", HeaderValue::from_static(DATE));
    signer()
        .sign(&Method::GET, &url, &mut headers, Payload::Unsigned)
        .unwrap();
    assert!(!headers.contains_key(header::DATE));
    assert_eq!(headers[header::HOST], "localhost:7000");
    let authorization = headers[header::AUTHORIZATION].to_str().unwrap();
    assert!(authorization.contains(r#"headers="x-date (request-target) host""#));
}

#[test]
fn an_empty_signed_body_still_has_length_and_hash() {
    let url = Url::parse("https://objectstorage.us-ashburn-1.oraclecloud.com/n/ns/b/b/u").unwrap();
    let mut headers = dated();
    signer()
        .sign(&Method::POST, &url, &mut headers, Payload::Signed(b""))
        .unwrap();
    assert_eq!(headers[header::CONTENT_LENGTH], "0");
    assert_eq!(
        headers["x-content-sha256"],
        "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
    );
}

#[test]
fn pkcs8_and_pkcs1_forms_of_a_key_sign_alike() {
    // `openssl pkcs8 -topk8 -nocrypt` of the vector key, with the console's trailing line.
    let pkcs1 = PrivateKey::from_pem(KEY, None).unwrap();
    let pkcs8_pem = include_str!("../../tests/data/oracle-vector-key.pkcs8.pem");
    let pkcs8 = PrivateKey::from_pem(&format!("{pkcs8_pem}OCI_API_KEY\n"), None).unwrap();
    assert_eq!(pkcs1.sign(b"x"), pkcs8.sign(b"x"));
}

#[test]
fn debug_output_hides_session_tokens_and_keys() {
    let key = PrivateKey::from_pem(KEY, None).unwrap();
    let signer = Signer::new("ST$eyJsecret.token.value", key);
    let debug = format!("{signer:?}");
    assert!(!debug.contains("eyJsecret"), "{debug}");
    assert!(!debug.contains("MIIC"), "{debug}");
}

#[test]
fn malformed_keys_are_refused_with_a_reason() {
    let err = PrivateKey::from_pem("not a key", None).unwrap_err();
    assert!(err.to_string().contains("not a PEM key"), "{err}");
    let public_only = &KEY[KEY.find("-----BEGIN PUBLIC KEY-----").unwrap()..];
    let err = PrivateKey::from_pem(public_only, None).unwrap_err();
    assert!(err.to_string().contains("PUBLIC KEY"), "{err}");
}
