"""The AWS side of the alb-shift tests, against moto's server on 127.0.0.1.

setup    creates an IAM user with an allow-all policy (the only unsigned calls
         moto lets through), then with that user's key a VPC, a load balancer,
         blue and green target groups with two running instances registered in
         each (healthy; --no-green-targets leaves green empty) and a listener
         forwarding to blue; prints JSON.
weights  prints the listener's forward weights as JSON.
ecs-setup creates cluster `prod`, task definition family `web` (container `app`, image web:1) and
         services web-blue (2 tasks) and web-green (0 tasks); prints JSON.
ecs-state prints each service's task definition, its image, desired and running counts.
dns-setup creates (at --route53 when given) hosted zone the7space.example with www CNAME -> blue.the7space.example, and SNS
         topic `ops` with an SQS queue subscribed; prints JSON.
dns-records prints the names of the zone's record sets.
dns-state prints the www record's values and every message the queue received.
put-secret creates a Secrets Manager secret (for aws-sm: secret sources).
credentials serves temporary credentials as ECS's container endpoint does (GET /creds, JSON
         AccessKeyId, SecretAccessKey, Token, Expiration) and as IMDSv2 does (PUT
         /latest/api/token, then GET /latest/meta-data/iam/security-credentials/[ROLE] with the
         token): each answer is a new role of moto's assumed with STS AssumeRole for --life
         seconds, and at its expiry the role loses its policy, so moto refuses what it signs from
         then on, as AWS refuses expired credentials. GET /served prints how many were served.
set-weights sets the listener's weights (--blue-weight, --green-weight), as before a test.
roles    creates role `ci` (web identity trust, everything allowed) and prints its ARN.
put-metrics puts --cpu and --memory percentages into CloudWatch for green, as ECS reports them
         (AWS/ECS CPUUtilization and MemoryUtilization of prod/web-green) and as an EC2 group with
         the CloudWatch agent does (AWS/EC2 CPUUtilization and CWAgent mem_used_percent of
         AutoScalingGroupName web-green).
stop     stops an instance: moto then reports its target `unused`
         (Target.InvalidState), not healthy.
worker   runs the short commands above read from stdin, one JSON argument list per line, and
         answers each with a JSON line (code, stdout, stderr): the tests keep a few of these.
serve    serves /metrics for Prometheus and /health: every scrape counts 100
         requests, and with --broken-green as many errors as green's weight,
         so the error rate follows the canary's share of traffic. POST
         /control?health=503 makes /health answer 503; POST
         /control?checks=1 adds a `canary_checks_total` series to /metrics,
         which is absent until then (a gate without data). /metrics also has an
         `http_request_duration_seconds` histogram (every request 50 ms, or
         --latency-ms) and `probe_success` (1, 0 while /health answers non-200),
         the green health probe a blackbox exporter would report, and
         `canary_error_ratio`, a gauge POST /control?error_permille=N sets.
"""
import argparse
import http.server
import json
import sys

import boto3

REGION = "us-east-1"


def client(service, endpoint, key="AKIDEXAMPLE", secret="dummy"):
    return boto3.client(service, region_name=REGION, endpoint_url=endpoint,
                        aws_access_key_id=key, aws_secret_access_key=secret)


def setup(a):
    iam = client("iam", a.endpoint)
    iam.create_user(UserName="deployer")
    key = iam.create_access_key(UserName="deployer")["AccessKey"]
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName="deployer", PolicyName="all", PolicyDocument=json.dumps(policy))
    k, s = key["AccessKeyId"], key["SecretAccessKey"]
    ec2 = client("ec2", a.endpoint, k, s)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{REGION}{z}")["Subnet"]["SubnetId"]
               for i, z in ((1, "a"), (2, "b"))]
    elb = client("elbv2", a.endpoint, k, s)
    lb = elb.create_load_balancer(Name="web", Subnets=subnets)["LoadBalancers"][0]["LoadBalancerArn"]
    groups = {name: elb.create_target_group(Name=name, Protocol="HTTP", Port=80, VpcId=vpc)["TargetGroups"][0]["TargetGroupArn"]
              for name in ("blue", "green")}
    instances = {}
    for name in ("blue", "green"):
        if name == "green" and a.no_green_targets:
            instances[name] = []
            continue
        run = ec2.run_instances(ImageId="ami-12c6146b", MinCount=2, MaxCount=2, SubnetId=subnets[0])
        instances[name] = [i["InstanceId"] for i in run["Instances"]]
        elb.register_targets(TargetGroupArn=groups[name], Targets=[{"Id": i, "Port": 80} for i in instances[name]])
    listener = elb.create_listener(
        LoadBalancerArn=lb, Protocol="HTTP", Port=80,
        DefaultActions=[{"Type": "forward", "ForwardConfig": {"TargetGroups": [
            {"TargetGroupArn": groups["blue"], "Weight": 100}, {"TargetGroupArn": groups["green"], "Weight": 0}]}}],
    )["Listeners"][0]["ListenerArn"]
    print(json.dumps({"access_key": k, "secret_key": s, "listener": listener,
                      "blue": groups["blue"], "green": groups["green"], "green_instances": instances["green"]}))


def stop(a):
    client("ec2", a.endpoint, a.key, a.secret).stop_instances(InstanceIds=[a.instance])


def put_secret(a):
    client("secretsmanager", a.endpoint, a.key, a.secret).create_secret(Name=a.name, SecretString=a.value)


def put_metrics(a):
    cw = client("cloudwatch", a.endpoint, a.key, a.secret)
    ecs = [{"Name": "ClusterName", "Value": "prod"}, {"Name": "ServiceName", "Value": "web-green"}]
    group = [{"Name": "AutoScalingGroupName", "Value": "web-green"}]
    for namespace, name, dims, value in (("AWS/ECS", "CPUUtilization", ecs, a.cpu), ("AWS/ECS", "MemoryUtilization", ecs, a.memory),
                                         ("AWS/EC2", "CPUUtilization", group, a.cpu), ("CWAgent", "mem_used_percent", group, a.memory)):
        cw.put_metric_data(Namespace=namespace, MetricData=[{"MetricName": name, "Dimensions": dims, "Value": value, "Unit": "Percent"}])
    print(json.dumps({"cpu": a.cpu, "memory": a.memory}))


def ecs_setup(a):
    ecs = client("ecs", a.endpoint, a.key, a.secret)
    ecs.create_cluster(clusterName="prod")
    td = ecs.register_task_definition(family="web", containerDefinitions=[
        {"name": "app", "image": "web:1", "memory": 256, "essential": True}])["taskDefinition"]["taskDefinitionArn"]
    for name, count in (("web-blue", 2), ("web-green", 0)):
        ecs.create_service(cluster="prod", serviceName=name, taskDefinition=td, desiredCount=count)
    # Blue runs its tasks, as it would in production.
    ecs.update_service(cluster="prod", service="web-blue", desiredCount=2)
    print(json.dumps({"task_definition": td}))


def ecs_state(a):
    ecs = client("ecs", a.endpoint, a.key, a.secret)
    out = {}
    for s in ecs.describe_services(cluster="prod", services=["web-blue", "web-green"])["services"]:
        td = ecs.describe_task_definition(taskDefinition=s["taskDefinition"])["taskDefinition"]
        out[s["serviceName"]] = {"task_definition": s["taskDefinition"], "image": td["containerDefinitions"][0]["image"],
                                 "desired": s["desiredCount"], "running": s["runningCount"]}
    print(json.dumps(out))


def dns_setup(a):
    r53 = client("route53", a.route53 or a.endpoint, a.key, a.secret)
    zone = r53.create_hosted_zone(Name="the7space.example", CallerReference="gantry")["HostedZone"]["Id"]
    r53.change_resource_record_sets(HostedZoneId=zone, ChangeBatch={"Changes": [{"Action": "UPSERT", "ResourceRecordSet": {
        "Name": "www.the7space.example", "Type": "CNAME", "TTL": 60, "ResourceRecords": [{"Value": "blue.the7space.example"}]}}]})
    sns, sqs = client("sns", a.endpoint, a.key, a.secret), client("sqs", a.endpoint, a.key, a.secret)
    topic = sns.create_topic(Name="ops")["TopicArn"]
    queue = sqs.create_queue(QueueName="ops-inbox")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"})
    print(json.dumps({"zone": zone.split("/")[-1], "topic": topic, "queue": queue}))


def dns_state(a):
    r53 = client("route53", a.route53 or a.endpoint, a.key, a.secret)
    zone = [z for z in r53.list_hosted_zones()["HostedZones"] if z["Name"] == "the7space.example."][0]["Id"]
    sets = r53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
    www = [[r["Value"] for r in s["ResourceRecords"]] for s in sets if s["Name"] == "www.the7space.example." and s["Type"] == "CNAME"]
    sqs = client("sqs", a.endpoint, a.key, a.secret)
    queue = sqs.get_queue_url(QueueName="ops-inbox")["QueueUrl"]
    got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
    print(json.dumps({"www": www[0] if www else None, "messages": [m["Body"] for m in got]}))


def dns_records(a):
    r53 = client("route53", a.route53 or a.endpoint, a.key, a.secret)
    zone = [z for z in r53.list_hosted_zones()["HostedZones"] if z["Name"] == "the7space.example."][0]["Id"]
    print(json.dumps([s["Name"] for s in r53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]]))


def weights(endpoint, key, secret, listener):
    elb = client("elbv2", endpoint, key, secret)
    action = elb.describe_listeners(ListenerArns=[listener])["Listeners"][0]["DefaultActions"][0]
    groups = action.get("ForwardConfig", {}).get("TargetGroups") or [{"TargetGroupArn": action["TargetGroupArn"], "Weight": 1}]
    return [{"arn": g["TargetGroupArn"], "weight": g.get("Weight", 1)} for g in groups]


def set_weights(a):
    elb = client("elbv2", a.endpoint, a.key, a.secret)
    groups = [{"TargetGroupArn": a.blue, "Weight": a.blue_weight}, {"TargetGroupArn": a.green, "Weight": a.green_weight}]
    elb.modify_listener(ListenerArn=a.listener, DefaultActions=[{"Type": "forward", "ForwardConfig": {"TargetGroups": groups}}])


def roles(a):
    iam = client("iam", a.endpoint, a.key, a.secret)
    trust = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Federated": "token.actions.githubusercontent.com"},
         "Action": "sts:AssumeRoleWithWebIdentity"},
        {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}
    arn = iam.create_role(RoleName="ci", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    iam.put_role_policy(RoleName="ci", PolicyName="all", PolicyDocument=json.dumps(ALLOW_ALL))
    print(json.dumps({"role": arn}))


ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def credentials(a):
    import threading
    from botocore.config import Config
    iam = client("iam", a.endpoint, a.key, a.secret)
    # STS refuses sessions under 900 s; moto takes any length, which a test needs.
    sts = boto3.client("sts", region_name=REGION, endpoint_url=a.endpoint, aws_access_key_id=a.key,
                       aws_secret_access_key=a.secret, config=Config(parameter_validation=False))
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}
    served = {"n": 0, "revoked": 0}
    lock = threading.Lock()

    def mint():
        with lock:
            served["n"] += 1
            name = f"served-{served['n']}"
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))
        iam.put_role_policy(RoleName=name, PolicyName="all", PolicyDocument=json.dumps(ALLOW_ALL))
        c = sts.assume_role(RoleArn=f"arn:aws:iam::123456789012:role/{name}", RoleSessionName=name,
                            DurationSeconds=a.life)["Credentials"]

        def revoke():
            iam.delete_role_policy(RoleName=name, PolicyName="all")
            with lock:
                served["revoked"] += 1
        timer = threading.Timer(a.life, revoke)
        timer.daemon = True
        timer.start()
        return {"Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": c["AccessKeyId"],
                "SecretAccessKey": c["SecretAccessKey"], "Token": c["SessionToken"],
                "Expiration": c["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ")}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def answer(self, status, body, kind="application/json", headers=()):
            body = body.encode()
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_PUT(self):
            ttl = self.headers.get("x-aws-ec2-metadata-token-ttl-seconds")
            if self.path == "/latest/api/token" and ttl:
                self.answer(200, "imds-session-token", "text/plain", [("x-aws-ec2-metadata-token-ttl-seconds", ttl)])
            else:
                self.answer(400, "")

        def do_GET(self):
            if self.path == "/served":
                with lock:
                    return self.answer(200, json.dumps(served))
            if self.path == "/creds":
                return self.answer(200, json.dumps(mint()))
            base = "/latest/meta-data/iam/security-credentials/"
            if self.path.startswith(base):
                if self.headers.get("x-aws-ec2-metadata-token") != "imds-session-token":
                    return self.answer(401, "")
                if self.path == base:
                    return self.answer(200, "deploy", "text/plain")
                return self.answer(200, json.dumps(mint()))
            if self.path == "/latest/meta-data/iam/info":
                return self.answer(200, json.dumps({"Code": "Success", "InstanceProfileArn": "arn:aws:iam::123456789012:instance-profile/deploy"}))
            self.answer(404, "")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    print("ready", flush=True)
    server.serve_forever()


def serve(a):
    totals = {"ok": 0, "error": 0}
    control = {"health": 200, "checks": 0, "error_permille": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            query = self.path.partition("?")[2]
            for pair in filter(None, query.split("&")):
                key, _, value = pair.partition("=")
                control[key] = int(value)
            self.send_response(204)
            self.end_headers()

        def do_GET(self):
            if self.path == "/health":
                body = b"ok"
                if control["health"] != 200:
                    self.send_response(control["health"])
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
            elif self.path == "/metrics":
                green = 0
                if a.broken_green:
                    w = {x["arn"]: x["weight"] for x in weights(a.endpoint, a.key, a.secret, a.listener)}
                    green = w.get(a.green, 0) * 100 // max(1, sum(w.values()))
                totals["error"] += green
                totals["ok"] += 100 - green
                requests = totals["ok"] + totals["error"]
                text = ("# TYPE http_requests_total counter\n"
                        f'http_requests_total{{status="200"}} {totals["ok"]}\n'
                        f'http_requests_total{{status="500"}} {totals["error"]}\n'
                        "# TYPE http_request_duration_seconds histogram\n")
                for le in (0.05, 0.1, 0.2, 0.5, 1.0):
                    within = requests if a.latency_ms / 1000 <= le else 0
                    text += f'http_request_duration_seconds_bucket{{le="{le}"}} {within}\n'
                text += (f'http_request_duration_seconds_bucket{{le="+Inf"}} {requests}\n'
                         f'http_request_duration_seconds_sum {requests * a.latency_ms / 1000}\n'
                         f'http_request_duration_seconds_count {requests}\n'
                         "# TYPE probe_success gauge\n"
                         f'probe_success {1 if control["health"] == 200 else 0}\n'
                         "# TYPE canary_error_ratio gauge\n"
                         f'canary_error_ratio {control["error_permille"] / 1000}\n')
                if control["checks"]:
                    totals["checks"] = totals.get("checks", 0) + 1
                    text += f'# TYPE canary_checks_total counter\ncanary_checks_total {totals["checks"]}\n'
                body = text.encode()
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("content-type", "text/plain; version=0.0.4")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    print("ready", flush=True)
    server.serve_forever()


def worker(_a):
    """Runs commands read from stdin, one JSON list of arguments per line, answering each with one
    JSON line of its exit code, output and errors: one Python and one boto3 import serve every
    short command of a test binary (each cost half a second of CPU as its own process)."""
    import contextlib
    import io
    import traceback
    for line in sys.stdin:
        out, err, code = io.StringIO(), io.StringIO(), 0
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                main(json.loads(line))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception:
            traceback.print_exc(file=err)
            code = 1
        print(json.dumps({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--endpoint", required=True)
    s.add_argument("--no-green-targets", action="store_true")
    for name in ("weights", "serve", "stop"):
        s = sub.add_parser(name)
        for arg in ("--endpoint", "--key", "--secret", "--listener"):
            s.add_argument(arg, required=True)
        if name == "stop":
            s.add_argument("--instance", required=True)
        if name == "serve":
            s.add_argument("--green", required=True)
            s.add_argument("--port", type=int, required=True)
            s.add_argument("--broken-green", action="store_true")
            s.add_argument("--latency-ms", type=float, default=50.0)
    for name in ("ecs-setup", "ecs-state", "dns-setup", "dns-state", "dns-records"):
        s = sub.add_parser(name)
        for arg in ("--endpoint", "--key", "--secret"):
            s.add_argument(arg, required=True)
        s.add_argument("--route53", help="another endpoint for Route 53")
    s = sub.add_parser("put-metrics")
    for arg in ("--endpoint", "--key", "--secret"):
        s.add_argument(arg, required=True)
    s.add_argument("--cpu", type=float, required=True)
    s.add_argument("--memory", type=float, required=True)
    s = sub.add_parser("credentials")
    for arg in ("--endpoint", "--key", "--secret"):
        s.add_argument(arg, required=True)
    s.add_argument("--life", type=int, required=True)
    s.add_argument("--port", type=int, required=True)
    s = sub.add_parser("set-weights")
    for arg in ("--endpoint", "--key", "--secret", "--listener", "--blue", "--green"):
        s.add_argument(arg, required=True)
    s.add_argument("--blue-weight", type=int, required=True)
    s.add_argument("--green-weight", type=int, required=True)
    s = sub.add_parser("roles")
    for arg in ("--endpoint", "--key", "--secret"):
        s.add_argument(arg, required=True)
    s = sub.add_parser("put-secret")
    for arg in ("--endpoint", "--key", "--secret", "--name", "--value"):
        s.add_argument(arg, required=True)
    sub.add_parser("worker")
    a = p.parse_args(argv)
    if a.cmd == "worker":
        worker(a)
    elif a.cmd == "setup":
        setup(a)
    elif a.cmd == "weights":
        print(json.dumps(weights(a.endpoint, a.key, a.secret, a.listener)))
    elif a.cmd == "stop":
        stop(a)
    elif a.cmd == "put-metrics":
        put_metrics(a)
    elif a.cmd == "put-secret":
        put_secret(a)
    elif a.cmd == "credentials":
        credentials(a)
    elif a.cmd == "roles":
        roles(a)
    elif a.cmd == "set-weights":
        set_weights(a)
    elif a.cmd == "ecs-setup":
        ecs_setup(a)
    elif a.cmd == "ecs-state":
        ecs_state(a)
    elif a.cmd == "dns-setup":
        dns_setup(a)
    elif a.cmd == "dns-state":
        dns_state(a)
    elif a.cmd == "dns-records":
        dns_records(a)
    else:
        serve(a)


if __name__ == "__main__":
    sys.exit(main())
