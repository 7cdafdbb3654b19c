#!/usr/bin/env bash
# Runs a real WordPress (Debian packages) on 127.0.0.1:PORT from DIR, with no
# system services and no /etc edits: MariaDB on a socket in DIR, WordPress
# copied into DIR/www, PHP's built-in server with a router. Adds a must-use
# plugin whose webhook route checks an HMAC-SHA256 signature.
# Usage: wordpress.sh DIR PORT WEBHOOK_SECRET
# Prints the admin's application password; process group ids go to DIR/pgids.
set -euo pipefail
R=$1 PORT=$2 HOOK=$3
mkdir -p "$R/tmp"
: > "$R/pgids"

# MariaDB's temporary files in DIR, not the shared /tmp other servers and cleaners use.
mariadb-install-db --no-defaults --user=root --datadir="$R/db" --tmpdir="$R/tmp" --auth-root-authentication-method=socket --skip-test-db >"$R/install.log" 2>&1
setsid mariadbd --no-defaults --user=root --datadir="$R/db" --tmpdir="$R/tmp" --socket="$R/mysqld.sock" --skip-networking \
  --pid-file="$R/mysqld.pid" >"$R/mysqld.log" 2>&1 < /dev/null &
echo $! >> "$R/pgids"
# Up to 60 s: a loaded two-core runner can take longer than 10 s to start MariaDB.
for _ in $(seq 600); do [ -S "$R/mysqld.sock" ] && break; sleep 0.1; done
mariadb --no-defaults -uroot --socket="$R/mysqld.sock" -e \
  "CREATE DATABASE wp; CREATE USER 'wp'@'localhost' IDENTIFIED BY 'wp'; GRANT ALL ON wp.* TO 'wp'@'localhost';"

cp -rL /usr/share/wordpress "$R/www"
rm -f "$R/www/wp-config.php"
cat > "$R/www/wp-config.php" <<PHP
<?php
define('DB_NAME', 'wp'); define('DB_USER', 'wp'); define('DB_PASSWORD', 'wp');
define('DB_HOST', 'localhost:$R/mysqld.sock'); define('DB_CHARSET', 'utf8mb4'); define('DB_COLLATE', '');
\$table_prefix = 'wp_';
foreach (['AUTH_KEY','SECURE_AUTH_KEY','LOGGED_IN_KEY','NONCE_KEY','AUTH_SALT','SECURE_AUTH_SALT','LOGGED_IN_SALT','NONCE_SALT'] as \$k) define(\$k, 'test-' . \$k);
define('WP_HOME', 'http://127.0.0.1:$PORT'); define('WP_SITEURL', 'http://127.0.0.1:$PORT');
define('WP_ENVIRONMENT_TYPE', 'local'); define('DISABLE_WP_CRON', true); define('WP_HTTP_BLOCK_EXTERNAL', true);
define('AUTOMATIC_UPDATER_DISABLED', true);
define('GANTRY_WEBHOOK_SECRET', '$HOOK');
if (!defined('ABSPATH')) define('ABSPATH', __DIR__ . '/');
require_once ABSPATH . 'wp-settings.php';
PHP
mkdir -p "$R/www/wp-content/mu-plugins"
cat > "$R/www/wp-content/mu-plugins/gantry-webhook.php" <<'PHP'
<?php
// Deployment webhook: accepts a JSON payload signed with HMAC-SHA256 in X-Gantry-Signature.
add_action('rest_api_init', function () {
    register_rest_route('gantry/v1', '/webhook', [
        'methods' => 'POST',
        'permission_callback' => '__return_true',
        'callback' => function (WP_REST_Request $req) {
            $expected = 'sha256=' . hash_hmac('sha256', $req->get_body(), GANTRY_WEBHOOK_SECRET);
            $got = (string) $req->get_header('x_gantry_signature');
            if (!hash_equals($expected, $got)) {
                return new WP_Error('bad_signature', 'signature does not match the body', ['status' => 401]);
            }
            $json = $req->get_json_params();
            return ['accepted' => true, 'event' => $json['event'] ?? null];
        },
    ]);
});
PHP
cat > "$R/router.php" <<'PHP'
<?php
$root = $_SERVER['DOCUMENT_ROOT'];
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
if ($path !== '/' && is_file($root . $path) && substr($path, -4) !== '.php') return false;
if ($path !== '/' && is_file($root . $path)) { require $root . $path; return; }
$_SERVER['SCRIPT_NAME'] = '/index.php';
require $root . '/index.php';
PHP
cat > "$R/install.php" <<'PHP'
<?php
define('WP_INSTALLING', true);
$_SERVER['HTTP_HOST'] = '127.0.0.1';
require $argv[1] . '/wp-load.php';
require_once ABSPATH . 'wp-admin/includes/upgrade.php';
wp_install('The 7 Space', 'admin', 'admin@example.com', true, '', 'not-used-' . bin2hex(random_bytes(8)));
update_option('permalink_structure', '/%postname%/');
flush_rewrite_rules();
[$password] = WP_Application_Passwords::create_new_application_password(1, ['name' => 'gantry']);
echo $password;
PHP
password=$(php "$R/install.php" "$R/www" 2>"$R/php-install.log")
PHP_CLI_SERVER_WORKERS=4 setsid php -S "127.0.0.1:$PORT" -t "$R/www" "$R/router.php" >"$R/php.log" 2>&1 < /dev/null &
echo $! >> "$R/pgids"
echo "$password"
