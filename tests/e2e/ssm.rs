//! SSM Parameter Store through the binary: IAM denials and paths longer than one page.

use crate::exec::exec_env;
use crate::harness::*;

#[test]
fn ssm_denied_names_the_action_and_what_was_asked() {
    // The first 5 calls are free: a user, its key, its policy, two parameters. Then IAM applies.
    let moto = PrivateMoto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", "5")]);
    // May list names, may not read values.
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ssm:DescribeParameters","Resource":"*"}]}"#;
    let (key_id, secret_key) = moto.user_with_policy("task", policy);
    put_parameter_at(&moto.endpoint, "/app/prod/DB_PASSWORD", "denied-pw", true);
    put_parameter_at(
        &moto.endpoint,
        "app.prod.db.password",
        "denied-dotted",
        true,
    );
    let as_task = |prefix: &str| {
        Workspace::empty()
            .ecr_build()
            .args(["exec", "--ssm-path", prefix, "--", "true"])
            .env("AWS_ENDPOINT_URL", &moto.endpoint)
            .env("AWS_ACCESS_KEY_ID", &key_id)
            .env("AWS_SECRET_ACCESS_KEY", &secret_key)
            .env("AWS_MAX_ATTEMPTS", "1")
            .run()
            .failure(1)
    };
    as_task("/app/prod")
        .stderr_has("ssm:GetParametersByPath on path /app/prod was denied in us-east-1")
        .stderr_has("kms:Decrypt");
    as_task("app.prod")
        .stderr_has("ssm:GetParameters on parameters app.prod.db.password was denied in us-east-1")
        .stderr_has("kms:Decrypt");
}

#[test]
fn ssm_path_of_more_than_one_page_is_exported_whole() {
    let base = format!("/{}/prod", unique("pages"));
    let mut expected = Vec::new();
    for i in 0..13 {
        let (name, variable) = match i % 3 {
            0 => (format!("{base}/KEY_{i}"), format!("KEY_{i}")),
            1 => (format!("{base}/group/key_{i}"), format!("GROUP_KEY_{i}")),
            _ => (format!("{base}/a/b/c/key-{i}"), format!("A_B_C_KEY_{i}")),
        };
        let value = format!("value-{i}-{}", &new_sha()[..8]);
        put_parameter(&name, &value, i % 2 == 0);
        expected.push((variable, value));
    }
    let env = exec_env(&["--ssm-path", &base], &[]);
    for (variable, value) in &expected {
        assert_eq!(env.get(variable), Some(value), "{variable}");
    }
}

#[test]
fn ssm_dotted_prefix_of_more_than_ten_names_is_exported_whole() {
    // DescribeParameters answers in pages, GetParameters takes 10 names a call.
    let prefix = format!("{}.prod", unique("pages-dotted"));
    let mut expected = Vec::new();
    for i in 0..23 {
        let value = format!("dotted-{i}-{}", &new_sha()[..8]);
        put_parameter(&format!("{prefix}.key.n{i}"), &value, i % 2 == 1);
        expected.push((format!("KEY_N{i}"), value));
    }
    let env = exec_env(&["--ssm-path", &prefix], &[]);
    for (variable, value) in &expected {
        assert_eq!(env.get(variable), Some(value), "{variable}");
    }
}
