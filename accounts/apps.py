from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        from django.contrib.auth import signals

        from accounts import signals as audit_signals

        signals.user_logged_in.connect(audit_signals.on_logged_in, dispatch_uid="steplens-audit-login")
        signals.user_logged_out.connect(audit_signals.on_logged_out, dispatch_uid="steplens-audit-logout")
        signals.user_login_failed.connect(audit_signals.on_login_failed, dispatch_uid="steplens-audit-login-failed")
