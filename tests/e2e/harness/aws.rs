//! moto's ECR and SSM, called as the AWS JSON protocol has it; and a moto of one test's own.

use super::*;

/// Calls an action of an AWS JSON 1.1 service on the moto at `endpoint`. moto checks no signature
/// (unless IAM is enforced, and then not for its first INITIAL_NO_AUTH_ACTION_COUNT calls).
fn aws_json_call(
    endpoint: &str,
    target: &str,
    service: &str,
    action: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let mut response = http()
        .post(endpoint)
        .header("X-Amz-Target", &format!("{target}.{action}"))
        .header("Content-Type", "application/x-amz-json-1.1")
        .header(
            "Authorization",
            &format!("AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0"),
        )
        .send(body.to_string())
        .unwrap_or_else(|e| panic!("{service} {action}: {e}"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    assert_eq!(status, 200, "{service} {action}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Calls an ECR action on the shared moto.
pub fn ecr_call(action: &str, body: serde_json::Value) -> serde_json::Value {
    aws_json_call(
        &services().aws_endpoint,
        "AmazonEC2ContainerRegistry_V20150921",
        "ecr",
        action,
        body,
    )
}

pub fn create_repository(name: &str) {
    ecr_call(
        "CreateRepository",
        serde_json::json!({ "repositoryName": name }),
    );
}

/// A moto server of one test's own, for behaviour the shared one must not have (IAM enforcement).
pub struct PrivateMoto {
    child: std::process::Child,
    pub endpoint: String,
}

impl PrivateMoto {
    pub fn start(env: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(required("ECR_BUILD_TEST_MOTO_SERVER"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let moto = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server on port {port} did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        moto
    }

    /// Makes an IAM user allowed only `policy`, and returns its access key id and secret key.
    /// Takes three of the calls moto makes before it enforces IAM.
    pub fn user_with_policy(&self, user: &str, policy: &str) -> (String, String) {
        self.iam(&[("Action", "CreateUser"), ("UserName", user)]);
        let key = self.iam(&[("Action", "CreateAccessKey"), ("UserName", user)]);
        self.iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", user),
            ("PolicyName", "only-this"),
            ("PolicyDocument", policy),
        ]);
        (
            xml_value(&key, "AccessKeyId"),
            xml_value(&key, "SecretAccessKey"),
        )
    }

    /// An IAM (query protocol) action; returns the XML answer.
    pub fn iam(&self, params: &[(&str, &str)]) -> String {
        let form: Vec<String> = params
            .iter()
            .chain(&[("Version", "2010-05-08")])
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect();
        let mut response = http()
            .post(&self.endpoint)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
            )
            .send(form.join("&"))
            .expect("IAM call");
        let text = response.body_mut().read_to_string().unwrap();
        assert_eq!(response.status().as_u16(), 200, "IAM {params:?}: {text}");
        text
    }
}

impl Drop for PrivateMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The text between `<tag>` and `</tag>`.
pub fn xml_value(xml: &str, tag: &str) -> String {
    let start = xml
        .find(&format!("<{tag}>"))
        .unwrap_or_else(|| panic!("no <{tag}> in {xml}"))
        + tag.len()
        + 2;
    let end = xml[start..].find(&format!("</{tag}>")).unwrap() + start;
    xml[start..end].to_owned()
}

/// Calls an SSM action on the moto at `endpoint`.
pub fn ssm_call_at(endpoint: &str, action: &str, body: serde_json::Value) -> serde_json::Value {
    aws_json_call(endpoint, "AmazonSSM", "ssm", action, body)
}

/// Creates or overwrites a parameter in the shared moto: a SecureString (default KMS key) if `secure`.
pub fn put_parameter(name: &str, value: &str, secure: bool) {
    put_parameter_at(&services().aws_endpoint, name, value, secure);
}

pub fn put_parameter_at(endpoint: &str, name: &str, value: &str, secure: bool) {
    ssm_call_at(
        endpoint,
        "PutParameter",
        serde_json::json!({
            "Name": name,
            "Value": value,
            "Type": if secure { "SecureString" } else { "String" },
            "Overwrite": true,
        }),
    );
}

pub fn create_immutable_repository(name: &str) {
    ecr_call(
        "CreateRepository",
        serde_json::json!({ "repositoryName": name, "imageTagMutability": "IMMUTABLE" }),
    );
}
