from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from chat import selectors
        from usage.selectors import conversation_titles_from

        # The usage pages list spend by conversation; chat opens the sealed titles.
        conversation_titles_from(
            lambda owner, ids: selectors.conversation_titles(owner=owner, ids=list(ids))
        )
